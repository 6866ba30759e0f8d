"""LoRA adapters per row: which adapter a task may send a row to, loading it on first use.

vLLM serves a LoRA adapter as a model of its own name (`--lora-modules name=path` at start,
listed by GET /v1/models with the base model as `parent`); a request names it in `model`.
Before a task sends its first row for an adapter it asks its sidecar once whether it serves
it. When it does not and the spec's `lora.modules` gives a path for it, the task loads it
with POST /v1/load_lora_adapter (vLLM answers that only with
VLLM_ALLOW_RUNTIME_LORA_UPDATING set: the chart's `sidecar.vllm.lora.runtimeLoading`).
An adapter that is neither served nor loadable makes its rows error rows naming the reason;
the other rows go on.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from spark_vllm.errors import RowError
from spark_vllm.task.client import NotOk, auth_headers, describe_url_error, get_ok


def served_models(base_url: str, api_key: str | None, timeout: float = 10.0) -> set[str]:
    """The names GET /v1/models lists (the base model and the adapters loaded)."""
    body = get_ok(base_url.rstrip("/") + "/models", api_key, timeout)
    return {str(m["id"]) for m in json.loads(body)["data"]}


def load_adapter(
    base_url: str, name: str, path: str, api_key: str | None, timeout: float = 120.0
) -> str | None:
    """Load adapter `name` from `path` into the sidecar; None when it is loaded, else why not."""
    url = base_url.rstrip("/") + "/load_lora_adapter"
    body = json.dumps({"lora_name": name, "lora_path": path}).encode()
    headers = {"Content-Type": "application/json", **auth_headers(api_key)}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout):  # noqa: S310
            return None
    except urllib.error.HTTPError as exc:
        text = exc.read().decode("utf-8", "replace")
        if exc.code == 400 and "already been loaded" in text:
            return None  # another task of this executor loaded it first
        if exc.code == 404 and _no_route(text):
            return (
                "the sidecar does not load adapters at run time (POST /v1/load_lora_adapter "
                "answered 404: vLLM needs VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, the chart's "
                "sidecar.vllm.lora.runtimeLoading: true); or preload it "
                "(sidecar.vllm.lora.adapters)"
            )
        return f"POST {url} answered {exc.code}: {_message(text)}"
    except (urllib.error.URLError, OSError) as exc:
        return f"POST {url}: {describe_url_error(exc)}"


def _no_route(text: str) -> bool:
    """Whether a 404's body is the web framework's own (no such route), not vLLM's."""
    try:
        return bool(json.loads(text) == {"detail": "Not Found"})
    except ValueError:
        return False


def _message(text: str) -> str:
    try:
        data = json.loads(text)
        found: Any = data.get("error", data)
        if isinstance(found, dict):
            found = found.get("message", found)
        return str(found)[:500]
    except (ValueError, AttributeError):
        return text[:500]


class Adapters:
    """A task's view of the adapters its sidecar serves (see the module's text)."""

    def __init__(
        self, base_url: str, base_model: str, modules: dict[str, str], api_key: str | None
    ) -> None:
        self.base_url = base_url
        self.base_model = base_model
        self.modules = dict(modules)
        self.api_key = api_key
        self._served: set[str] | None = None
        self._refused: dict[str, str] = {}  # adapter -> why its rows cannot be sent

    def forget(self) -> None:
        """The sidecar restarted: what it served and refused is to be asked again (an
        adapter loaded at run time is gone with the old process)."""
        self._served = None
        self._refused.clear()

    def check(self, name: str) -> None:
        """Return when the sidecar serves `name` (loading it if the spec says how);
        RowError naming the reason when it cannot."""
        if name == self.base_model:
            return
        if name in self._refused:
            raise RowError(self._refused[name])
        if self._served is None:
            try:
                self._served = served_models(self.base_url, self.api_key)
            except (NotOk, ValueError, KeyError, TypeError):
                return  # not known now: the request goes, and vLLM answers for the adapter
        if name in self._served:
            return
        path = self.modules.get(name)
        if path is None:
            # The name is the row's value, not the spec's: an error text never quotes it.
            why = (
                f"the row's LoRA adapter is not served by the sidecar (it serves "
                f"{sorted(self._served)}) and lora.modules gives no path to load it from"
            )
        else:
            failed = load_adapter(self.base_url, name, path, self.api_key)
            if failed is None:
                self._served.add(name)
                return
            why = f"LoRA adapter {name!r} could not be loaded from {path!r}: {failed}"
        self._refused[name] = why
        raise RowError(why)
