"""The lake, read and written on the driver: the input readers, the output stores (files
and JDBC), the run records and fingerprints that resume reads, and the results reader.
"""
