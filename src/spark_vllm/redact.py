"""Secrets taken out of texts that reach errors, logs and summaries.

A URL's password (`scheme://user:password@host`), a password-like parameter of a JDBC
or HTTP URL (`password=…`, `;pwd=…`, `?token=…`) and any known secret value become `***`:
error texts end in the run's summary, its JSON and `GET /jobs/{id}`, which others read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

HIDDEN = "***"

_USERINFO = re.compile(r"(?<=://)([^/@\s:;?#]*):([^@/\s]*)@")
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
    return _SECRET_PARAMS.sub(rf"\1\2{HIDDEN}", text)
