"""The job spec: what it accepts, and the messages it gives for what it refuses."""

from pathlib import Path

import pytest
import yaml

from spark_vllm.spec import SpecError, apply_overrides, load_spec, spec_from_dict

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).parents[2] / "examples" / "jobs" / "chat.yaml"


def minimal(**changes):
    doc = {
        "input": {"format": "jsonl", "path": "in.jsonl"},
        "output": {"path": "out"},
        "endpoint": {"model": "m"},
        "prompt": {"template": "{{ question }}"},
    }
    doc.update(changes)
    return doc


def error_of(doc) -> str:
    with pytest.raises(SpecError) as info:
        spec_from_dict(doc)
    return str(info.value)


def test_example_spec_is_valid():
    spec = load_spec(EXAMPLE)
    assert spec.task == "chat"
    assert spec.endpoint.base_url == "http://127.0.0.1:8000/v1"


def test_defaults_fill_in_what_is_left_out():
    spec = spec_from_dict(minimal())
    assert spec.on_error == "record"
    assert spec.concurrency.per_executor == 256
    assert spec.output.format == "parquet"
    assert spec.id_column() == "id"


def test_unknown_key_is_refused_with_its_path():
    message = error_of(minimal(output={"path": "out", "fromat": "jsonl"}))
    assert "output.fromat: unknown key" in message


def test_wrong_type_names_path_value_and_expectation():
    message = error_of(minimal(concurrency={"per_executor": "lots"}))
    assert "concurrency.per_executor" in message
    assert "'lots'" in message
    assert "integer" in message


def test_bad_enum_value_lists_the_choices():
    message = error_of(minimal(task="translate"))
    assert "task: expected one of 'chat', 'completion' or 'embedding', got 'translate'" in message
    assert "'chat', 'completion' or 'embedding'" in message


def test_template_that_does_not_parse_is_refused():
    message = error_of(minimal(prompt={"template": "{{ question "}))
    assert "prompt.template does not parse" in message


def test_prompt_needs_exactly_one_source():
    assert "exactly one of prompt.template, prompt.column and prompt.content" in error_of(
        minimal(prompt={})
    )
    both = {"template": "{{ q }}", "column": "messages"}
    assert "exactly one" in error_of(minimal(prompt=both))


def test_table_input_needs_a_table_name():
    message = error_of(minimal(input={"format": "table", "path": "x"}))
    assert "input.table" in message


def test_missing_required_key_is_named():
    doc = minimal()
    del doc["endpoint"]
    assert "endpoint: required key is missing" in error_of(doc)


def test_sampling_passes_unknown_keys_through_to_vllm():
    spec = spec_from_dict(minimal(sampling={"max_tokens": 8, "ignore_eos": True, "min_p": 0.1}))
    assert spec.sampling.request_fields() == {"max_tokens": 8, "ignore_eos": True, "min_p": 0.1}


def test_kept_column_may_not_shadow_a_result_column():
    message = error_of(minimal(output={"path": "o", "keep_columns": ["error"]}))
    assert "output.keep_columns" in message and "error" in message


@pytest.mark.parametrize("kept", [["text", "Error", "Response"], ["run"], ["RUN", "topic"]])
def test_a_kept_column_clashing_in_case_or_with_run_is_refused(kept):  # type: ignore[no-untyped-def]
    """Spark matches names regardless of case, and every output has a `run` column."""
    message = error_of(minimal(output={"path": "o", "keep_columns": kept}))
    clash = [k for k in kept if k.lower() in ("error", "response", "run")]
    assert f"{', '.join(map(repr, clash))} would clash with the result column(s)" in message


def test_columns_the_input_lacks_are_refused():
    spec = spec_from_dict(minimal(output={"path": "o", "keep_columns": ["topic"]}))
    spec.check_columns(["question", "topic"])
    with pytest.raises(SpecError, match=r"prompt: column\(s\) \['question'\] not in the input"):
        spec.check_columns(["text", "topic"])
    with pytest.raises(SpecError, match="output.keep_columns"):
        spec.check_columns(["question"])


def test_input_with_an_id_column_must_declare_it():
    spec = spec_from_dict(minimal())
    with pytest.raises(SpecError, match="set input.id_column: id"):
        spec.check_columns(["id", "question"])


def test_overrides_set_nested_fields_as_yaml_values(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(minimal()))
    spec = load_spec(
        path,
        ["sampling.max_tokens=7", "sampling.stop=[a, b]", "on_error=fail", "output.path=/x"],
    )
    assert spec.sampling.max_tokens == 7
    assert spec.sampling.stop == ["a", "b"]
    assert spec.on_error == "fail"
    assert spec.output.path == "/x"


def test_override_errors_are_explained():
    with pytest.raises(SpecError, match="expected KEY.PATH=VALUE"):
        apply_overrides({}, ["sampling.max_tokens"])
    with pytest.raises(SpecError, match="not a mapping"):
        apply_overrides({"task": "chat"}, ["task.x=1"])


def test_override_values_are_validated_like_the_file(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(minimal()))
    with pytest.raises(SpecError, match="sampling.max_tokens: expected at least 1, got 0"):
        load_spec(path, ["sampling.max_tokens=0"])


def test_unreadable_or_non_mapping_file_is_refused(tmp_path):
    with pytest.raises(SpecError, match="cannot read it"):
        load_spec(tmp_path / "absent.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="expected a mapping"):
        load_spec(path)


def test_completion_task_takes_no_system_message():
    doc = minimal(task="completion", prompt={"template": "{{ q }}", "system": "s"})
    assert "prompt.system is for task 'chat'" in error_of(doc)


def test_seed_auto_is_not_sent_as_a_literal_seed():
    spec = spec_from_dict(minimal(sampling={"seed": "auto", "max_tokens": 4}))
    assert spec.sampling.seed == "auto"
    assert spec.sampling.request_fields() == {"max_tokens": 4}
    assert "sampling.seed: expected an integer or 'auto', got 'random'" in error_of(
        minimal(sampling={"seed": "random"})
    )


def test_resume_is_the_default_output_mode_and_rates_are_shares():
    spec = spec_from_dict(minimal())
    assert spec.output.mode == "resume"
    assert spec.max_error_rate is None
    assert "max_error_rate: expected at most 1, got 1.5" in error_of(minimal(max_error_rate=1.5))


def test_embedding_task_sends_its_own_fields_and_no_sampling():
    spec = spec_from_dict(minimal(task="embedding", embedding={"batch_size": 8, "dimensions": 64}))
    assert spec.embedding.batch_size == 8
    assert spec.embedding.request_fields() == {"encoding_format": "base64", "dimensions": 64}


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"sampling": {"max_tokens": 8}}, "['sampling'] are for generating tasks"),
        ({"sampling_column": "s"}, "['sampling_column'] are for generating tasks"),
        ({"structured_output": {"ddl": "a INT"}}, "['structured_output'] are for generating"),
        ({"prompt": {"template": "{{ q }}", "system": "be brief"}}, "prompt.system is for task"),
        ({"embedding": {"batch_size": 0}}, "embedding.batch_size: expected at least 1, got 0"),
    ],
)
def test_embedding_task_refuses_what_only_generation_takes(changes, named):
    assert named in error_of(minimal(task="embedding", **changes))


def test_embedding_settings_on_a_chat_task_are_refused():
    message = error_of(minimal(embedding={"batch_size": 8}))
    assert "embedding settings are for task 'embedding', not 'chat'" in message


@pytest.mark.parametrize("path", sorted(EXAMPLE.parent.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_spec_is_valid_and_its_input_exists(path):
    spec = load_spec(path)
    where = EXAMPLE.parents[2] / spec.input.path
    if spec.input.format == "binaryFile":  # a folder of files
        assert where.is_dir() and any(where.iterdir())
    else:
        assert where.is_file()


def test_openai_batch_input_is_answered_in_its_own_format():
    batch = {"format": "openai-batch", "path": "b.jsonl"}
    spec = spec_from_dict(minimal(input=batch, prompt=None))
    assert spec.output.format == "openai-batch"
    assert spec.id_column() == "custom_id"
    message = error_of(minimal(input=batch))
    assert "each line's url and body say what to send; remove ['prompt']" in message
    message = error_of(minimal(input=batch, prompt=None, output={"path": "o", "format": "jsonl"}))
    assert "answered in output.format 'openai-batch', not 'jsonl'" in message
    message = error_of(minimal(output={"path": "o", "format": "openai-batch"}))
    assert "needs input.format 'openai-batch'" in message
    message = error_of(minimal(input={**batch, "id_column": "n"}, prompt=None))
    assert "identifies lines by custom_id" in message


JDBC = {"url": "jdbc:postgresql://db:5432/shop", "user_env": "DB_USER", "password_env": "DB_PW"}


def test_jdbc_in_and_out():
    spec = spec_from_dict(
        minimal(
            input={"format": "jdbc", "jdbc": {**JDBC, "table": "products"}},
            output={"format": "jdbc", "jdbc": {**JDBC, "table": "answers"}},
        )
    )
    assert spec.output.jdbc is not None and spec.output.jdbc.write_mode == "upsert"
    assert spec.output.where() == "table answers (jdbc)"


@pytest.mark.parametrize(
    ("inp", "out", "named"),
    [
        ({"table": "t", "query": "select 1"}, {"table": "a"}, "exactly one of input.jdbc.table"),
        (
            {"table": "t", "partition_column": "id"},
            {"table": "a"},
            "['lower_bound', 'upper_bound', 'num_partitions'] missing",
        ),
        ({"table": "t", "url": "postgresql://db/shop"}, {"table": "a"}, "expected a JDBC URL"),
        (
            {"table": "t", "properties": {"password": "x"}},
            {"table": "a"},
            "use user_env and password_env",
        ),
        (
            {"table": "t"},
            {"table": "a", "write_mode": "merge"},
            "'upsert', 'append' or 'overwrite'",
        ),
    ],
)
def test_jdbc_mistakes_are_named(inp, out, named):
    doc = minimal(
        input={"format": "jdbc", "jdbc": {**JDBC, **inp}},
        output={"format": "jdbc", "jdbc": {**JDBC, **out}},
    )
    assert named in error_of(doc)


def test_jdbc_output_takes_a_table_not_a_path_or_mode_overwrite():
    target = {"format": "jdbc", "jdbc": {**JDBC, "table": "a"}}
    assert "remove output.path" in error_of(minimal(output={**target, "path": "out"}))
    message = error_of(minimal(output={**target, "mode": "overwrite"}))
    assert "output.jdbc.write_mode: overwrite" in message
    assert "needs output.jdbc" in error_of(minimal(output={"format": "jdbc"}))
    assert "needs input.jdbc" in error_of(minimal(input={"format": "jdbc"}))


def test_jdbc_credentials_are_read_from_the_named_variables(monkeypatch):
    from spark_vllm.spec import JdbcInput
    from spark_vllm.storage import jdbc

    src = JdbcInput(**JDBC, table="t")
    monkeypatch.setenv("DB_USER", "ann")
    monkeypatch.delenv("DB_PW", raising=False)
    with pytest.raises(SpecError, match="input.jdbc.password_env names 'DB_PW', but that"):
        jdbc.properties(src, "input.jdbc")
    monkeypatch.setenv("DB_PW", "pw")
    assert jdbc.properties(src, "input.jdbc") == {
        "user": "ann",
        "password": "pw",
        "driver": "org.postgresql.Driver",
    }


def test_a_template_given_by_set_without_quotes_is_explained():
    with pytest.raises(SpecError) as info:
        apply_overrides({}, ["prompt.template={{ question }}"])
    message = str(info.value)
    assert "found unhashable key" in message
    assert "read as YAML" in message
    assert "--set 'prompt.template=\"{{ question }}\"'" in message
    # The quoted form it suggests is accepted as the text.
    assert apply_overrides({}, ['prompt.template="{{ question }}"']) == {
        "prompt": {"template": "{{ question }}"}
    }


@pytest.mark.parametrize(
    ("sampling", "named"),
    [
        ({"stream": True}, "sampling.stream (True): the job reads whole answers"),
        ({"stream_options": {"include_usage": True}}, "sampling.stream_options"),
        ({"n": 3}, "sampling.n (3): the job stores one answer per row"),
        ({"prompt_logprobs": 2}, "sampling.prompt_logprobs"),
        ({"return_token_ids": True}, "sampling.return_token_ids"),
        ({"tools": [{"type": "function"}]}, "sampling.tools ([{'type': 'function'}]): the answer"),
        ({"tool_choice": "required"}, "sampling.tool_choice"),
    ],
)
def test_request_fields_that_change_the_answers_shape_are_refused(sampling, named):
    message = error_of(minimal(sampling=sampling))
    assert named in message
    assert "input.format: openai-batch" in message


@pytest.mark.parametrize("sampling", [{"stream": False}, {"n": 1}, {"echo": True}])
def test_request_fields_that_change_nothing_pass(sampling):
    spec_from_dict(minimal(sampling=sampling))


def test_logprobs_make_a_column_and_take_each_tasks_own_form():
    chat = spec_from_dict(minimal(sampling={"logprobs": True, "top_logprobs": 3}))
    assert chat.wants_logprobs()
    assert not spec_from_dict(minimal(sampling={"logprobs": False})).wants_logprobs()
    completion = spec_from_dict(minimal(task="completion", sampling={"logprobs": 0}))
    assert completion.wants_logprobs()
    assert "task chat takes true or false" in error_of(minimal(sampling={"logprobs": 2}))
    assert "task completion takes the number" in error_of(
        minimal(task="completion", sampling={"logprobs": True})
    )
    assert "needs sampling.logprobs: true" in error_of(minimal(sampling={"top_logprobs": 2}))
    assert "logprobs" in error_of(
        minimal(sampling={"logprobs": True}, output={"path": "o", "keep_columns": ["logprobs"]})
    )


def test_response_format_and_structured_output_are_one_or_the_other():
    doc = minimal(
        sampling={"response_format": {"type": "json_object"}},
        structured_output={"ddl": "a STRING"},
    )
    assert "structured_output sets the response format" in error_of(doc)


def test_on_change_refuses_by_default_and_takes_resume():
    assert spec_from_dict(minimal()).output.on_change == "refuse"
    doc = minimal(output={"path": "o", "on_change": "resume"})
    assert spec_from_dict(doc).output.on_change == "resume"
    assert "output.on_change" in error_of(minimal(output={"path": "o", "on_change": "maybe"}))


def test_max_per_executor_is_read_as_max_per_task_with_a_warning():
    with pytest.warns(FutureWarning, match="call it concurrency.max_per_task"):
        spec = spec_from_dict(minimal(concurrency={"max_per_executor": 512}))
    assert spec.concurrency.max_per_task == 512
    both = minimal(concurrency={"max_per_executor": 512, "max_per_task": 512})
    assert "set concurrency.max_per_task only" in error_of(both)
    assert "max_per_task (8) is below per_executor (256)" in error_of(
        minimal(concurrency={"max_per_task": 8})
    )


def test_a_spec_read_from_a_file_knows_its_name():
    assert load_spec(EXAMPLE).source == "chat.yaml"
    assert spec_from_dict(minimal()).source == ""


def test_metrics_need_their_token_in_the_environment(monkeypatch):
    from spark_vllm.driver.job import _metrics_token  # internal: the check plan() makes first

    assert _metrics_token(spec_from_dict(minimal())) is None  # off by default
    spec = spec_from_dict(minimal(metrics={"enabled": True, "token_env": "SCRAPE_TOKEN"}))
    monkeypatch.delenv("SCRAPE_TOKEN", raising=False)
    with pytest.raises(SpecError, match=r"environment variable SCRAPE_TOKEN \(metrics.token_env\)"):
        _metrics_token(spec)
    monkeypatch.setenv("SCRAPE_TOKEN", "  ")
    with pytest.raises(SpecError, match="unset or empty"):
        _metrics_token(spec)
    monkeypatch.setenv("SCRAPE_TOKEN", "s3cret")
    assert _metrics_token(spec) == "s3cret"
    assert "metrics.enabled" in error_of(minimal(metrics={"enabled": "maybe"}))


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"sample": {"seed": 3}}, "give sample.fraction or sample.rows"),
        ({"sample": {"fraction": 0.1, "rows": 5}}, "give sample.fraction or sample.rows"),
        ({"sample": {"fraction": 1.5}}, "sample.fraction"),
        ({"limit": 0}, "limit"),
        ({"budget": {}}, "a budget needs max_rows, max_prompt_tokens or max_output_tokens"),
        ({"budget": {"max_rows": -1}}, "budget.max_rows"),
        ({"on_overlong": "cut"}, "on_overlong"),
        ({"estimate": {"output_tokens_per_s": 0}}, "estimate.output_tokens_per_s"),
        ({"prefix": {}}, "give prefix.columns or prefix.chars"),
        ({"prefix": {"columns": ["doc"], "chars": 100}}, "give prefix.columns or prefix.chars"),
        ({"prefix": {"columns": []}}, "prefix.columns"),
        ({"prefix": {"chars": 0}}, "prefix.chars"),
        (
            {"task": "embedding", "prompt": {"column": "q"}, "prefix": {"chars": 100}},
            "prefix is for generating tasks",
        ),
        (
            {"task": "embedding", "prompt": {"column": "q"}, "on_overlong": "truncate"},
            "embedding.truncate_prompt_tokens",
        ),
        (
            {"task": "embedding", "prompt": {"column": "q"}, "budget": {"max_output_tokens": 9}},
            "use budget.max_rows",
        ),
    ],
)
def test_samples_limits_budgets_and_truncation_are_checked(changes, says):
    assert says in error_of(minimal(**changes))


def test_a_row_budget_suits_every_task():
    doc = minimal(task="embedding", prompt={"column": "q"}, budget={"max_rows": 10})
    assert spec_from_dict(doc).budget.max_rows == 10


def test_prefix_columns_must_be_in_the_input():
    spec = spec_from_dict(minimal(prefix={"columns": ["document_id"]}))
    with pytest.raises(SpecError, match=r"prefix.columns: column\(s\) \['document_id'\] not in"):
        spec.check_columns(["question"])
    spec.check_columns(["question", "document_id"])


def test_a_tasks_defaults_are_the_specs() -> None:
    """The task's records and the column functions state no default of their own: each is
    the spec's (spec.default), so a default changed in the spec changes them all."""
    import inspect

    from spark_vllm.driver.functions import chat, embed
    from spark_vllm.spec import (
        ConcurrencySpec,
        EmbeddingSpec,
        JobSpec,
        RetrySpec,
        TimeoutSpec,
        default,
    )
    from spark_vllm.task.retry import RetryPolicy
    from spark_vllm.task.runner import Concurrency, ErrorPolicy, Timeouts

    spec = TimeoutSpec()
    assert Timeouts() == Timeouts(spec.ready_s, spec.request_s, spec.connect_s, spec.outage_s)
    retry = RetrySpec()
    assert RetryPolicy() == RetryPolicy(
        retry.attempts, retry.backoff_initial_s, retry.backoff_max_s, retry.backoff_multiplier
    )
    concurrency = ConcurrencySpec()
    assert Concurrency().max_per_task == concurrency.max_per_task
    assert Concurrency().metrics_interval_s == concurrency.metrics_interval_s
    assert Concurrency().adaptive is (concurrency.mode == "adaptive")
    fields = JobSpec.model_fields
    assert ErrorPolicy() == ErrorPolicy(
        fields["on_error"].default,
        fields["max_error_rate"].default,
        fields["error_rate_min_rows"].default,
    )
    for function in (chat, embed):
        parameters = inspect.signature(function).parameters
        assert parameters["retries"].default == retry.attempts
        assert parameters["request_timeout_s"].default == spec.request_s
        assert parameters["ready_timeout_s"].default == spec.ready_s
        assert parameters["max_window"].default == concurrency.max_per_task
    assert inspect.signature(embed).parameters["batch_size"].default == EmbeddingSpec().batch_size
    with pytest.raises(ValueError, match="no plain default"):
        default(JobSpec, "input")  # required
    with pytest.raises(KeyError):
        default(TimeoutSpec, "nope")


def test_a_missing_prompt_names_all_three_ways_to_give_one() -> None:
    """Found by a new-user try: the message named template and column, not content."""
    doc = {
        "input": {"format": "jsonl", "path": "in.jsonl"},
        "output": {"path": "out"},
        "endpoint": {"model": "m"},
    }
    with pytest.raises(SpecError, match="prompt.template, prompt.column and prompt.content"):
        spec_from_dict(doc)


def test_a_misspelled_sampling_key_is_refused_with_the_nearest_field():
    message = error_of(minimal(sampling={"temprature": 0}))
    assert (
        "sampling.temprature is not a request field vLLM knows; did you mean temperature?"
        in message
    )
    completion = error_of(minimal(task="completion", sampling={"presense_penalty": 1}))
    assert "sampling.presense_penalty is not a request field vLLM knows; did you mean" in (
        completion
    )
    assert "did you mean presence_penalty?" in completion
    assert "sampling.xyzzy is not a request field vLLM knows\n" in error_of(
        minimal(sampling={"xyzzy": 1, "n": 2})
    )


def test_a_field_of_the_other_task_is_refused_naming_its_task():
    assert "sampling.suffix is a request field of task completion, not chat" in error_of(
        minimal(sampling={"suffix": "."})
    )
    assert "sampling.chat_template_kwargs is a request field of task chat, not completion" in (
        error_of(minimal(task="completion", sampling={"chat_template_kwargs": {}}))
    )


def test_every_refused_sampling_key_is_named_not_only_the_first():
    message = error_of(minimal(sampling={"temprature": 0, "topp": 0.9, "n": 3, "stream": True}))
    for named in (
        "sampling.temprature is not",
        "sampling.topp is not a request field vLLM knows; did you mean top_p?",
        "sampling.n (3): the job stores one answer per row",
        "sampling.stream (True): the job reads whole answers",
    ):
        assert named in message


def test_sampling_keys_vllm_knows_pass_for_their_task():
    chat = {"ignore_eos": True, "min_p": 0.1, "repetition_penalty": 1.1, "top_k": 5}
    assert spec_from_dict(minimal(sampling=chat)).sampling.request_fields()["top_k"] == 5
    completion = {"suffix": ".", "echo": False, "logprobs": 0}
    spec = spec_from_dict(minimal(task="completion", sampling=completion))
    assert spec.sampling.request_fields()["suffix"] == "."


def test_a_key_given_twice_in_the_spec_file_is_refused_with_both_lines(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(
        "input: {format: jsonl, path: in.jsonl}\n"
        "output: {path: out}\n"
        "endpoint: {model: m}\n"
        "prompt: {template: '{{ q }}'}\n"
        "sampling:\n"
        "  max_tokens: 5\n"
        "  temperature: 0\n"
        "  max_tokens: 9\n"
    )
    with pytest.raises(SpecError, match="'max_tokens' is given twice, on lines 6 and 8"):
        load_spec(path)
    path.write_text(
        "input: {format: jsonl, path: in.jsonl}\n"
        "sampling: {max_tokens: 5}\n"
        "output: {path: out}\n"
        "endpoint: {model: m, model: n}\n"
        "prompt: {template: '{{ q }}'}\n"
        "sampling: {temperature: 0}\n"
    )
    with pytest.raises(SpecError, match="'sampling' is given twice, on lines 2 and 6"):
        load_spec(path)
    path.write_text(path.read_text().replace("sampling: {temperature: 0}\n", ""))
    with pytest.raises(SpecError, match="'model' is given twice, on line 4;"):
        load_spec(path)
    with pytest.raises(SpecError, match="override .*'a' is given twice"):
        apply_overrides({}, ["input.options={a: '1', a: '2'}"])


def test_an_empty_or_wrong_type_section_names_what_it_needs():
    for value, got in ((None, "got nothing (the key has no value)"), ("m", "got 'm'")):
        assert f"endpoint: expected a mapping with model, {got}" in error_of(
            minimal(endpoint=value)
        )
    assert "sampling: expected a mapping, got ['a']" in error_of(minimal(sampling=["a"]))
    assert "output: expected a mapping, got nothing" in error_of(minimal(output=None))
    assert "Input should" not in error_of(minimal(output=None, sampling=["a"]))


def test_a_wrong_type_says_what_was_expected_and_what_was_given():
    assert "sampling.seed: expected an integer or 'auto', got 'random'" in error_of(
        minimal(sampling={"seed": "random"})
    )
    assert "sampling.stop: expected text or a list, got 5" in error_of(
        minimal(sampling={"stop": 5})
    )
    assert "sampling.max_tokens: expected an integer, got 1.5" in error_of(
        minimal(sampling={"max_tokens": 1.5})
    )
    assert "sampling.temperature: expected a number, got 'hot'" in error_of(
        minimal(sampling={"temperature": "hot"})
    )
    assert "on_error: expected one of 'record' or 'fail', got True" in error_of(
        minimal(on_error=True)
    )
    assert "input.options.header: expected text, got True" in error_of(
        minimal(input={"format": "csv", "path": "x", "options": {"header": True}})
    )
    assert "prompt.content.0.text: expected text, got 5" in error_of(
        minimal(prompt={"content": [{"text": 5}]})
    )


def test_a_value_outside_its_bounds_says_the_bound_not_pydantics_words():
    for doc, said in (
        (
            minimal(concurrency={"per_executor": -1}),
            "concurrency.per_executor: expected at least 1, got -1",
        ),
        (minimal(sampling={"top_p": 0}), "sampling.top_p: expected more than 0, got 0"),
        (minimal(prompt={"content": []}), "prompt.content: expected at least one item, got []"),
    ):
        message = error_of(doc)
        assert said in message and "Input should" not in message


def test_a_missing_nested_key_says_what_it_is_for():
    assert (
        "endpoint.model: required key is missing: the name vLLM serves the model under"
        in error_of(minimal(endpoint={}))
    )


@pytest.mark.parametrize(
    ("doc", "named"),
    [
        (minimal(output={"path": "out", "fromat": "jsonl"}),
         "output.fromat: unknown key (did you mean output.format?)"),
        ({**minimal(), "smapling": {"temperature": 0}},
         "smapling: unknown key (did you mean sampling?)"),
        (minimal(output={"path": "out", "format": "delta", "write_mode": "upsert"}),
         "output.write_mode: unknown key (it is a key of output.jdbc.write_mode and of "
         "output.delta.write_mode)"),
        (minimal(output={"path": "out", "format": "delta", "delta": {"write_mod": "upsert"}}),
         "output.delta.write_mod: unknown key (did you mean output.delta.write_mode?)"),
        (minimal(output={"path": "out", "zzz": 1}), "output.zzz: unknown key; check"),
    ],
)  # fmt: skip
def test_an_unknown_key_names_the_nearest_known_one(doc, named):  # type: ignore[no-untyped-def]
    assert named in error_of(doc)


@pytest.mark.parametrize(
    "raw",
    ["{{ question }}: {{ topic }}", "{{ row['customer name'] }}: {{ text }}", '{{ a }} "b"'],
)
def test_the_quoting_hint_for_a_template_can_be_pasted_into_a_shell(raw):  # type: ignore[no-untyped-def]
    """A template given unquoted to --set is not YAML text; the hint's --set argument,
    pasted into a POSIX shell, gives the template back (one with ' in it too)."""
    import shlex

    from spark_vllm.spec import parse_override

    with pytest.raises(SpecError) as info:
        parse_override(f"prompt.template={raw}")
    suggested = str(info.value).split("quote it as YAML text: --set ", 1)[1]
    (argument,) = shlex.split(suggested)
    assert parse_override(argument) == (["prompt", "template"], raw)


@pytest.mark.parametrize("column", ["run", "Error", "response"])
def test_an_id_column_clashing_with_a_result_column_is_refused(column):
    message = error_of(minimal(input={"format": "jsonl", "path": "in", "id_column": column}))
    assert (
        f"input.id_column: got {column!r}; {column!r} would clash with the result column(s) "
        "the job writes itself (names match regardless of case; `run` is the run's id); "
        "rename the input column or unset input.id_column to derive ids"
    ) in message


def test_a_nested_rule_naming_its_own_key_says_the_path_once():
    message = error_of(minimal(prompt={"template": "{{ question "}))
    assert message == (
        "invalid job spec:\n  prompt.template does not parse: line 1: unexpected end of "
        "template, expected 'end of print statement'."
    )
    bad = {"type": "object", "properties": {"a": {}}}
    message = error_of(minimal(structured_output={"json_schema": bad}))
    assert "\n  structured_output.json_schema: schema.a: needs a 'type'" in message
    assert "structured_output: structured_output" not in message
