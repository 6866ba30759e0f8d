"""The Spark driver's side of a job: plan and execute (`job`), the census and the plan,
task slots, prefix placement, counting before spending (`preflight`), live progress and
the budget's endpoint, the summary, the column functions, and vLLM servers started by
the driver (`local_server`, `servers`).
"""
