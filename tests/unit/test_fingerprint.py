"""The settings that make a run's answers what they are, and what resume makes of them."""

import pytest

from spark_vllm.spec import spec_from_dict
from spark_vllm.storage.fingerprint import RunRecord, changes, fingerprint, matching_runs

pytestmark = pytest.mark.unit


def spec(**changes_):
    doc = {
        "input": {"format": "jsonl", "path": "in.jsonl"},
        "output": {"path": "out"},
        "endpoint": {"model": "m"},
        "prompt": {"template": "{{ q }}", "system": "Be brief."},
        "sampling": {"max_tokens": 16, "temperature": 0.0},
    }
    doc.update(changes_)
    return spec_from_dict({k: v for k, v in doc.items() if v is not None})


BASE = fingerprint(spec())


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"task": "completion", "prompt": {"template": "{{ q }}"}}, "task"),
        ({"endpoint": {"model": "other"}}, "endpoint.model"),
        ({"prompt": {"template": "Q: {{ q }}", "system": "Be brief."}}, "prompt.template"),
        ({"prompt": {"template": "{{ q }}"}}, "prompt.system"),
        ({"prompt": {"column": "q"}}, "prompt.column"),
        ({"sampling": {"max_tokens": 32, "temperature": 0.0}}, "sampling.max_tokens"),
        ({"sampling": {"max_tokens": 16, "temperature": 0.0, "seed": "auto"}}, "sampling.seed"),
        ({"sampling": {"max_tokens": 16, "temperature": 0.0, "min_p": 0.1}}, "sampling.min_p"),
        ({"sampling_column": "s"}, "sampling_column"),
        ({"structured_output": {"ddl": "a STRING"}}, "structured_output"),
        ({"on_overlong": "truncate"}, "on_overlong"),
    ],
)
def test_each_setting_that_decides_the_answers_is_in_the_fingerprint(change, key):
    after = fingerprint(spec(**change))
    assert after != BASE
    assert any(line.startswith(f"{key}:") for line in changes(BASE, after)), changes(BASE, after)


@pytest.mark.parametrize(
    "change",
    [
        {"concurrency": {"per_executor": 8, "mode": "fixed"}},
        {"retries": {"attempts": 9}},
        {"timeouts": {"ready_s": 5, "request_s": 9}},
        {"partitions": 7},
        {"output": {"path": "elsewhere", "keep_columns": ["x"]}},
        {"on_error": "fail", "max_error_rate": 0.5},
        {"spark": {"master": "local[1]"}},
        # which rows a run sends, not what their answers are: a later run resumes past them
        {"limit": 10, "sample": {"rows": 5}, "budget": {"max_rows": 3}},
        {"on_overlong": "error"},  # the default, as runs before the key recorded nothing
        {"metrics": {"enabled": True}, "progress": {"interval_s": 1}},
        {"estimate": {"output_tokens_per_s": 100}},
    ],
)
def test_settings_that_change_only_speed_or_safety_are_not(change):
    assert fingerprint(spec(**change)) == BASE


def test_embedding_settings_that_change_the_vector_are_in_it_and_batch_size_is_not():
    def embedding(**options):
        return fingerprint(spec(task="embedding", sampling=None, prompt={"template": "{{ q }}"},
                                embedding=options))  # fmt: skip

    assert embedding(batch_size=64) == embedding(batch_size=8)
    assert embedding(dimensions=128) != embedding()
    assert embedding(truncate_prompt_tokens=100) != embedding()


def test_changes_name_each_key_with_old_and_new_values():
    after = fingerprint(spec(prompt={"template": "{{ q }}"}, endpoint={"model": "big"}))
    assert changes(BASE, after) == [
        'endpoint.model: "m" → "big"',
        'prompt.system: "Be brief." → null',
    ]


def test_runs_with_the_same_fingerprint_and_those_they_adopted_match():
    other = {**BASE, "task": "completion"}
    records = {
        "r1": RunRecord("r1", other),
        "r2": RunRecord("r2", BASE, adopted=["r1"]),
        "r3": RunRecord("r3", None),
        "r4": RunRecord("r4", other),
    }
    assert matching_runs(records, BASE) == {"r1", "r2"}
    assert matching_runs(records, other) == {"r1", "r4"}
    assert RunRecord.from_json("r2", records["r2"].to_json()) == records["r2"]
