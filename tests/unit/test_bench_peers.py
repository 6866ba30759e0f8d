"""The peers bench's bookkeeping: the id check, the derived figures and the target."""

import pytest

from bench.peers import derive, targets
from bench.peers_paths import id_check

pytestmark = pytest.mark.unit


def test_every_id_answered_once_is_a_clean_check() -> None:
    assert id_check(["a", "b", "c"], ["c", "a", "b"]) == {
        "answered": 3,
        "lost": 0,
        "duplicated": 0,
        "unknown_ids": 0,
    }


def test_missing_repeated_and_foreign_ids_are_each_counted() -> None:
    got = id_check(["a", "b", "c", "d"], ["a", "a", "a", "b", "z"])
    assert got == {"answered": 2, "lost": 2, "duplicated": 2, "unknown_ids": 1}


def _run(tool: str, answered: int, seconds: float, cpu: float, lost: int = 0) -> dict:
    return {
        "tool": tool,
        "rows": 1000,
        "answered": answered,
        "lost": lost,
        "duplicated": 0,
        "unknown_ids": 0,
        "seconds": seconds,
        "cpu_s": {"driver": cpu / 2, "jvm": cpu / 2},
    }


def test_derive_gives_rate_ratio_to_bare_and_cpu_per_thousand_rows() -> None:
    m = derive(_run("daft", 1000, 2.0, 3.0), bare_rate=1000.0)
    assert m["rows_per_s"] == 500.0
    assert m["vs_bare"] == 0.5
    assert m["cpu_s_per_1k_rows"] == 3.0
    assert m["check"] == "ok"


def test_a_lost_row_fails_the_check() -> None:
    assert derive(_run("daft", 999, 2.0, 3.0, lost=1), bare_rate=None)["check"] == "WRONG"


def test_target_compares_spark_vllm_with_the_fastest_peer_that_ran() -> None:
    runs = {
        "spark-vllm": derive(_run("spark-vllm", 1000, 1.0, 1.0), None),
        "ray-data-llm": derive(_run("ray-data-llm", 1000, 4.0, 1.0), None),
        "daft": derive(_run("daft", 1000, 2.0, 1.0), None),
    }
    (target,) = targets(runs)
    assert "daft" in target["target"]
    assert target["value"] == 2.0
    assert target["met"]


def test_no_target_without_a_peer() -> None:
    assert targets({"spark-vllm": derive(_run("spark-vllm", 1000, 1.0, 1.0), None)}) == []
