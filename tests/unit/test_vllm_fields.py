"""The request fields the job spec checks `sampling` against are the installed vLLM's: the
checked-in list (scripts/vllm_request_fields.py) fails here when a vLLM upgrade changes
them."""

import importlib.util
import sys
from pathlib import Path

import pytest

from spark_vllm.request.vllm_fields import REQUEST_FIELDS, VLLM_VERSION

pytestmark = pytest.mark.unit

ROOT = Path(__file__).parents[2]


@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (extra cpu or gpu)"
)
def test_the_checked_in_request_fields_are_the_installed_vllms():
    import vllm

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import vllm_request_fields
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    fresh = vllm_request_fields.fields()
    assert (VLLM_VERSION, {k: sorted(v) for k, v in REQUEST_FIELDS.items()}) == (
        vllm.__version__,
        fresh,
    ), "run scripts/vllm_request_fields.py to update src/spark_vllm/request/vllm_fields.py"
