"""Kubernetes: operating jobs with the chart (`operate`: submit, status, logs, cancel,
list), the HTTP trigger, the metrics proxy beside each executor's vLLM, and the names all
three share with the chart (`chart`).

Needs the `k8s` extra (kubernetes, fastapi, uvicorn), but for the metrics proxy (aiohttp
only, a core dependency): the sidecar image runs it.
"""
