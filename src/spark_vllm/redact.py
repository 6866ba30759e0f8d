"""Secrets taken out of texts that reach errors, logs and summaries.

A URL's password (`scheme://user:password@host`), a password-like parameter of a JDBC
or HTTP URL (`password=…`, `;pwd=…`, `?token=…`), the value a validation error quotes
(`input_value=…`, as in vLLM's 400 answers), the model name of vLLM's 404 (a row's, with
lora.column) and any known secret value become `***`:
error texts end in the run's summary, its JSON and `GET /jobs/{id}`, which others read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

HIDDEN = "***"

_USERINFO = re.compile(r"(?<=://)([^/@\s:;?#]*):([^@/\s]*)@")
# pydantic's validation errors (vLLM's 400 answers) quote the value they refused: a row's.
_INPUT_VALUE = re.compile(r"input_value=('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^,\s\]]+)")
# vLLM's 404 for a model it does not serve names it: a row's, with lora.column.
_MODEL_NAME = re.compile(r"(The model )`[^`]*`")
_SECRET_PARAMS = re.compile(
    r"(?i)\b(password|passwd|pwd|secret|token|access[_-]?key|secret[_-]?key|api[_-]?key|"
    r"sas|sig|signature|credentials?)(\s*=\s*)([^;&\s,)\"']+)"
)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with URL passwords, password-like parameters and `secrets` as `***`."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, HIDDEN)
    text = _USERINFO.sub(rf"\1:{HIDDEN}@", text)
    text = _INPUT_VALUE.sub(f"input_value={HIDDEN}", text)
    text = _MODEL_NAME.sub(rf"\1`{HIDDEN}`", text)
    return _SECRET_PARAMS.sub(rf"\1\2{HIDDEN}", text)
