"""What a row becomes: its request (the kinds of request, the prompt with its images, the
structured-output schema, an OpenAI batch file's lines) and its outcome (`Result`); and
the names the spec checks requests and columns against (`fields`).

Runs on the driver and in every Spark task; pure and picklable. Imports the package's
common modules (errors) only.
"""
