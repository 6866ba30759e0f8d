"""Rows with images through the chart, on the real one-node cluster: the sidecar serves the
tiny vision-language model (made by the image's own Python) with the chart's
`sidecar.vllm.limitMmPerPrompt`, the job reads a folder of pictures with Spark's binaryFile
source, and every picture is answered but a damaged one, which is an error row."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.image.pod import docker

from .jobs import chat_job, make_job
from .kube import ROOT, Cluster

pytestmark = pytest.mark.cluster

VLM_DIR = "tiny-vlm"


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_pictures_are_answered_in_the_pod_and_a_damaged_one_is_an_error_row(
    cluster: Cluster, namespace: str, image: str, model_root: Path, tmp_path: Path
) -> None:
    docker(
        "run", "--rm", "--read-only", "--tmpfs", "/tmp:rw,exec,mode=1777",
        "-v", f"{ROOT / 'scripts'}:/scripts:ro", "-v", f"{model_root}:/models",
        image, "python", "/scripts/make_tiny_vlm.py", f"/models/{VLM_DIR}",
    )  # fmt: skip
    spec = chat_job(
        input={"format": "binaryFile", "path": "/data/input/images", "id_column": "path"},
        output={"format": "parquet", "path": "/data/output", "keep_columns": ["length"]},
        prompt={"content": [{"image": "content"}, {"text": "What is in this picture?"}]},
        sampling={"max_tokens": 8, "temperature": 0.0},
        partitions=2,
    )
    job = make_job(cluster, namespace, "images-k8s", tmp_path, image, model_root, 1, spec)
    pictures = job.data / "input" / "images"
    pictures.mkdir()
    pictures.chmod(0o777)
    for name, seed in (("one.png", 1), ("two.png", 2), ("again.png", 1)):
        (pictures / name).write_bytes(png(seed))
    cut = png(3)
    (pictures / "cut.png").write_bytes(cut[: len(cut) // 2])
    values = yaml.safe_load(job.values_file.read_text())
    values["model"].update({"path": VLM_DIR, "servedName": "tiny-vlm"})
    values["sidecar"]["vllm"]["limitMmPerPrompt"] = {"image": 2}
    job.values_file.write_text(yaml.safe_dump(values))
    job.install()
    try:
        status = job.wait_finished(900)
        assert status == "Complete", job.report()
        (out,) = job.rows_by_run().values()
    finally:
        job.uninstall()
    rows = {Path(r["path"]).name: r for r in out}
    assert sorted(rows) == ["again.png", "cut.png", "one.png", "two.png"]
    assert rows["cut.png"]["error"] == (
        "bad input: image column 'content': the PNG is damaged: Truncated File Read"
    )
    for name in ("one.png", "two.png", "again.png"):
        assert rows[name]["error"] is None, rows[name]
        assert rows[name]["prompt_tokens"] > 19  # the picture's 19 tokens and the text
    assert rows["one.png"]["response"] == rows["again.png"]["response"]
    assert rows["one.png"]["response"] != rows["two.png"]["response"]
