"""Rows with images, on real Spark and a real vLLM serving a tiny vision-language model.

The model (scripts/make_tiny_vlm.py) has random weights, so what proves that an image
reached it is what the image changes: its prompt grows by the model's image tokens per
image, and at temperature 0 two different images give different answers while the same
image gives the same one, whichever way it came (bytes, a binaryFile file, a path).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from spark_vllm import run_job, spec_from_dict
from tests.conftest import ROOT, write_jsonl
from tests.integration.jobs import read_rows

pytestmark = pytest.mark.integration

VLM_NAME = "tiny-vlm"
QUESTION = "Describe the image."


@pytest.fixture(scope="module")
def vlm_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """The tiny vision-language model and the prompt tokens one image adds."""
    out = tmp_path_factory.mktemp("models") / "tiny-vlm"
    made = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_tiny_vlm.py"), str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    return out, json.loads(made.stdout.strip().splitlines()[-1])["image_tokens"]


@pytest.fixture(scope="module")
def vlm_server(vlm_model, tmp_path_factory):  # type: ignore[no-untyped-def]
    """A real vLLM serving the tiny VLM (up to 4 images a prompt), for this module only.
    SPARK_VLLM_TEST_VLM_URL points at one you run yourself while iterating."""
    from spark_vllm import LocalServer

    if os.environ.get("SPARK_VLLM_TEST_VLM_URL"):
        yield os.environ["SPARK_VLLM_TEST_VLM_URL"]
        return
    server = LocalServer(
        model=str(vlm_model[0]),
        served_model_name=VLM_NAME,
        log_path=tmp_path_factory.mktemp("vllm-vlm") / "server.log",
        vllm_args=["--max-model-len", "512", "--dtype", "float32",
                   "--limit-mm-per-prompt", '{"image": 4}'],
        ready_timeout_s=420,
    )  # fmt: skip
    with server:
        yield server.base_url


def png(seed: int, size: int = 64) -> bytes:
    """A noise image: different seeds, different pixels."""
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def spec(tmp_path: Path, base_url: str, input_: dict, image: str, **changes) -> dict:
    doc = {
        "input": input_,
        "output": {"format": "parquet", "path": str(tmp_path / "out")},
        "endpoint": {"base_url": base_url, "model": VLM_NAME},
        "prompt": {"content": [{"image": image}, {"text": QUESTION}]},
        "sampling": {"max_tokens": 8, "temperature": 0.0},
        "timeouts": {"ready_s": 30},
        "partitions": 2,
    }
    doc.update(changes)
    return doc


def by_id(path: Path) -> dict[str, dict]:
    return {str(r["id"] if "id" in r else r["path"]): r for r in read_rows(path)}


def test_images_reach_the_model_from_a_parquet_binary_column(
    spark, vlm_server, vlm_model, tmp_path
):
    _, image_tokens = vlm_model
    a, b = png(1), png(2)
    table = pa.table({
        "id": ["a", "a-again", "b", "a+b", "b+a", "none"],
        "photos": [[a], [a], [b], [a, b], [b, a], []],
    })  # fmt: skip
    pq.write_table(table, tmp_path / "in.parquet")
    doc = spec(tmp_path, vlm_server, {"format": "parquet", "path": str(tmp_path / "in.parquet"),
               "id_column": "id"}, "photos")  # fmt: skip
    summary = run_job(spark, spec_from_dict(doc))
    rows = by_id(tmp_path / "out")
    assert summary.rows == 6 and len(rows) == 6
    assert rows["none"]["error"] == "bad input: image column 'photos' holds an empty list"
    ok = {k: v for k, v in rows.items() if k != "none"}
    assert all(r["error"] is None for r in ok.values()), ok
    # each image adds the model's image tokens to the prompt
    assert rows["a+b"]["prompt_tokens"] - rows["a"]["prompt_tokens"] == image_tokens
    assert rows["a"]["prompt_tokens"] == rows["b"]["prompt_tokens"]
    # the same image, the same greedy answer; another image, another answer
    assert rows["a"]["response"] == rows["a-again"]["response"]
    assert rows["a"]["response"] != rows["b"]["response"]
    assert rows["a+b"]["response"] != rows["b+a"]["response"]


def test_a_binary_file_folder_with_a_corrupt_and_an_oversized_image(spark, vlm_server, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "one.png").write_bytes(png(1))
    (folder / "two.png").write_bytes(png(2))
    (folder / "again.png").write_bytes(png(1))
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
    cut = png(4)
    (folder / "cut.png").write_bytes(cut[: len(cut) // 2])
    big = png(3, size=256)
    (folder / "big.png").write_bytes(big)
    limit = len(big) - 1
    doc = spec(tmp_path, vlm_server, {"format": "binaryFile", "path": str(folder),
               "id_column": "path"}, "content", output={"format": "parquet",
               "path": str(tmp_path / "out"), "keep_columns": ["length"]})  # fmt: skip
    doc["prompt"]["max_image_bytes"] = limit
    summary = run_job(spark, spec_from_dict(doc))
    rows = {Path(k).name: v for k, v in by_id(tmp_path / "out").items()}
    assert summary.rows == 6 and sorted(rows) == [
        "again.png", "big.png", "corrupt.png", "cut.png", "one.png", "two.png"]  # fmt: skip
    assert rows["corrupt.png"]["error"] == (
        "bad input: image column 'content': the 308 bytes are not an image Pillow recognises; "
        "expected PNG, JPEG, GIF, WebP, BMP or TIFF bytes"
    )
    assert rows["cut.png"]["error"] == (
        "bad input: image column 'content': the PNG is damaged: Truncated File Read"
    )
    assert rows["big.png"]["error"] == (
        f"bad input: image column 'content': the image has {len(big):,} bytes, more than "
        f"prompt.max_image_bytes ({limit:,} bytes)"
    )
    for name in ("one.png", "two.png", "again.png"):
        assert rows[name]["error"] is None
        assert rows[name]["length"] == (folder / name).stat().st_size
    assert rows["one.png"]["response"] == rows["again.png"]["response"]
    assert rows["one.png"]["response"] != rows["two.png"]["response"]


def test_a_path_column_reads_each_file_under_its_prefixes_and_a_missing_one_is_an_error_row(
    spark, vlm_server, tmp_path
):
    (tmp_path / "one.png").write_bytes(png(1))
    (tmp_path / "two.png").write_bytes(png(2))
    rows_in = [
        {"id": "path", "image": str(tmp_path / "one.png")},
        {"id": "uri", "image": (tmp_path / "one.png").as_uri()},
        {"id": "two", "image": str(tmp_path / "two.png")},
        {"id": "missing", "image": str(tmp_path / "nope.png")},
        {"id": "null", "image": None},
        {"id": "outside", "image": str(Path(__file__).resolve())},
    ]
    doc = spec(tmp_path, vlm_server, {"format": "jsonl", "id_column": "id",
               "path": str(write_jsonl(tmp_path / "in.jsonl", rows_in))}, "image")  # fmt: skip
    doc["prompt"]["image_prefixes"] = [str(tmp_path)]
    run_job(spark, spec_from_dict(doc))
    rows = by_id(tmp_path / "out")
    assert rows["missing"]["error"] == (
        "bad input: image column 'image': cannot read the path: no such file"
    )
    assert rows["outside"]["error"] == (
        "bad input: image column 'image': holds a path, and the task reads image files only "
        "under prompt.image_prefixes (the path is under none of them); list the folder there, "
        "or send images as bytes or http(s)/data URLs"
    )
    assert rows["null"]["error"] == "bad input: image column 'image' is null"
    assert rows["path"]["response"] == rows["uri"]["response"] != rows["two"]["response"]
    # the same image as bytes gives the same answer as read from its path
    pq.write_table(pa.table({"id": ["bytes"], "image": [png(1)]}), tmp_path / "b.parquet")
    (tmp_path / "again").mkdir()
    again = spec(tmp_path / "again", vlm_server, {"format": "parquet", "id_column": "id",
                 "path": str(tmp_path / "b.parquet")}, "image")  # fmt: skip
    run_job(spark, spec_from_dict(again))
    assert by_id(tmp_path / "again" / "out")["bytes"]["response"] == rows["path"]["response"]


def test_the_plan_counts_image_tokens_as_the_run_does(spark, vlm_server, vlm_model, tmp_path):
    """The server's POST /tokenize counts an image's tokens as the run's prompt_tokens; the
    tokenizer files cannot, and say so for each image row instead of counting less."""
    from spark_vllm.driver.job import plan
    from spark_vllm.driver.preflight import FileTokens, ServerTokens, count_rows
    from spark_vllm.task.client import server_root

    table = pa.table({"id": ["one", "two"], "photos": [[png(1)], [png(1), png(2)]]})
    pq.write_table(table, tmp_path / "in.parquet")
    doc = spec(tmp_path, vlm_server, {"format": "parquet", "path": str(tmp_path / "in.parquet"),
               "id_column": "id"}, "photos")  # fmt: skip
    counted = {}
    for name, tokens in (("server", ServerTokens(server_root(vlm_server))),
                         ("files", FileTokens(str(vlm_model[0])))):  # fmt: skip
        job = plan(spark, spec_from_dict(doc))
        if job.progress is not None:
            job.progress.close()
        found = count_rows(spec_from_dict(doc), job, tokens, 512)
        assert found is not None
        counted[name] = {r["id"]: r.asDict() for r in found.collect()}
    run_job(spark, spec_from_dict(doc))
    out = by_id(tmp_path / "out")
    assert {i: r["prompt_tokens"] for i, r in counted["server"].items()} == {
        i: r["prompt_tokens"] for i, r in out.items()
    }
    for row in counted["files"].values():
        assert row["prompt_tokens"] is None
        assert "the tokenizer files do not know how many tokens" in row["error"]


def test_batch_file_lines_with_image_parts_are_sent_as_they_are(
    spark, vlm_server, vlm_model, tmp_path
):
    import base64

    from tests.integration.jobs import batch_line, batch_output, batch_spec

    _, image_tokens = vlm_model
    url = "data:image/png;base64," + base64.b64encode(png(1)).decode()
    text = {"type": "text", "text": QUESTION}
    image = {"type": "image_url", "image_url": {"url": url}}
    lines = [
        batch_line(name, "/v1/chat/completions", {
            "model": VLM_NAME, "max_tokens": 4, "temperature": 0.0,
            "messages": [{"role": "user", "content": parts}],
        })
        for name, parts in (("text", [text]), ("image", [image, text]))
    ]  # fmt: skip
    run_job(spark, batch_spec(tmp_path, vlm_server, VLM_NAME, lines))
    found = {r["custom_id"]: r for r in batch_output(tmp_path / "out")}
    assert all(r["error"] is None for r in found.values()), found
    usage = {k: r["response"]["body"]["usage"] for k, r in found.items()}
    assert usage["image"]["prompt_tokens"] - usage["text"]["prompt_tokens"] == image_tokens
