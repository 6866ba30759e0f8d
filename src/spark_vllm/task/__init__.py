"""A Spark task's side: the partition runner, the sidecar client with its retries and
outage gate, the adaptive window, LoRA adapters, the task's account of its rows (`tally`)
and its end of the job's budget (`budget`).

What a pickled task imports on an executor. Imports the request layer and the spec,
never the storage, driver or cluster code (tests/unit/test_layers.py).
"""
