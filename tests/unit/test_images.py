"""Images of a row and LoRA adapters per row: what a row becomes, and every way it can fail."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from spark_vllm import RowError, SpecError, spec_from_dict
from spark_vllm.driver.job import kind_for
from spark_vllm.request.images import data_url, image_parts, image_url
from spark_vllm.request.prompt import PromptBuilder
from spark_vllm.storage.fingerprint import fingerprint

pytestmark = pytest.mark.unit

LIMIT = 1_000_000


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (8, 8), color: int = 90) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (color, 20, 200)).save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize(
    ("fmt", "mime"),
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("GIF", "image/gif"), ("WEBP", "image/webp"),
     ("BMP", "image/bmp"), ("TIFF", "image/tiff")],
)  # fmt: skip
def test_bytes_become_a_data_url_of_their_own_media_type(fmt, mime):
    data = image_bytes(fmt)
    url = data_url(data, "image column 'photo'", LIMIT)
    head, _, payload = url.partition(",")
    assert head == f"data:{mime};base64"
    assert base64.b64decode(payload) == data


def test_bytes_that_are_not_an_image_are_refused_without_quoting_them():
    with pytest.raises(RowError, match=r"photo'.*12 bytes are not an image") as refused:
        data_url(b"not an image", "image column 'photo'", LIMIT)
    assert "6e 6f" not in str(refused.value) and "not an image'" not in str(refused.value)


def test_a_cut_off_png_is_refused_as_damaged():
    data = image_bytes(size=(64, 64))
    with pytest.raises(RowError, match=r"photo'.*(damaged|not an image)"):
        data_url(data[: len(data) // 2], "image column 'photo'", LIMIT)


def test_an_image_over_the_limit_names_its_size_and_the_limit():
    data = image_bytes()
    with pytest.raises(RowError, match=rf"has {len(data):,} bytes.*max_image_bytes \(10 bytes\)"):
        data_url(data, "image column 'photo'", 10)


def test_urls_go_to_vllm_as_they_are_and_data_urls_must_hold_images():
    assert image_url("https://example.com/a.png", "w", LIMIT) == "https://example.com/a.png"
    assert image_url(" http://x/y.jpg ", "w", LIMIT) == "http://x/y.jpg"
    data = image_bytes()
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    assert image_url(url, "w", LIMIT) == url
    with pytest.raises(RowError, match="data:image/<type>;base64"):
        image_url("data:text/plain;base64,AAAA", "w", LIMIT)
    with pytest.raises(RowError, match="not valid base64"):
        image_url("data:image/png;base64,%%%", "w", LIMIT)
    with pytest.raises(RowError, match="6 bytes are not an image"):
        image_url("data:image/png;base64," + base64.b64encode(b"abcdef").decode(), "w", LIMIT)
    with pytest.raises(RowError, match=r"has 75,000,000 bytes, more than .*\(10 bytes\)"):
        image_url("data:image/png;base64," + "A" * 100_000_000, "w", 10)  # not decoded
    # the size limit holds for data URLs too
    with pytest.raises(RowError, match=rf"has {len(data):,} bytes, more than .*\(10 bytes\)"):
        image_url(url, "w", 10)


def test_paths_are_read_local_and_file_urls_alike_under_an_allowed_prefix(tmp_path: Path):
    data = image_bytes("JPEG")
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    expected = data_url(data, "w", LIMIT)
    allowed = (str(tmp_path),)
    assert image_url(str(path), "w", LIMIT, allowed) == expected
    assert image_url(path.as_uri(), "w", LIMIT, allowed) == expected
    assert image_url(str(path), "w", LIMIT, (tmp_path.as_uri() + "/",)) == expected


@pytest.mark.parametrize(
    "path",
    ["/var/run/secrets/kubernetes.io/serviceaccount/token", "s3://other-bucket/a.png",
     "{tmp}/../x.png", "{tmp}2/a.png", "{tmp}/link/a.png", "s3a://b/imagesX/a.png"],
)  # fmt: skip
def test_a_path_outside_the_allowed_prefixes_is_an_error_row_not_a_read(tmp_path: Path, path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "link").symlink_to(tmp_path)
    value = path.format(tmp=tmp_path / "in")
    for prefixes in ((), (str(tmp_path / "in"), "s3a://b/images/")):
        with pytest.raises(RowError, match="reads image files only under prompt.image_prefixes"):
            image_url(value, "w", LIMIT, prefixes)


def test_unreadable_paths_are_error_rows_naming_the_column_not_the_path(tmp_path: Path):
    allowed = (str(tmp_path),)
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(RowError, match=r"^w: the 19 bytes are not an image") as refused:
        image_url(str(bad), "w", LIMIT, allowed)
    assert "notes" not in str(refused.value)
    with pytest.raises(RowError, match=r"^w: cannot read the path: no such file$"):
        image_url(str(tmp_path / "missing.png"), "w", LIMIT, allowed)
    with pytest.raises(RowError, match="not a file"):
        image_url(str(tmp_path), "w", LIMIT, allowed)
    with pytest.raises(RowError, match=r"scheme is not one the task reads.*binaryFile"):
        image_url("abfss://c@acct.dfs.core.windows.net/a.png", "w", LIMIT, allowed)
    big = tmp_path / "big.png"
    big.write_bytes(image_bytes(size=(64, 64)))
    with pytest.raises(
        RowError, match=r"^w: the image has [\d,]+ bytes, more than .*\(100 bytes\)"
    ):
        image_url(str(big), "w", 100, allowed)


def test_nulls_empty_lists_and_other_types_are_refused():
    with pytest.raises(RowError, match="image column 'photo' is null"):
        image_parts(None, "photo", LIMIT)
    with pytest.raises(RowError, match="empty list"):
        image_parts([], "photo", LIMIT)
    with pytest.raises(RowError, match="item 1 is null"):
        image_parts([image_bytes(), None], "photo", LIMIT)
    with pytest.raises(RowError, match="expected image bytes, a path or a URL.*got int"):
        image_parts(7, "photo", LIMIT)
    with pytest.raises(RowError, match="image path is empty"):
        image_parts("  ", "photo", LIMIT)


def test_content_parts_keep_the_specs_order_and_a_list_column_gives_one_part_each():
    builder = PromptBuilder(
        "chat",
        system="Be brief.",
        content=[("text", "Compare {{ name }}:"), ("image", "photos"), ("text", "and"),
                 ("image", "back")],
        max_image_bytes=LIMIT,
    )  # fmt: skip
    a, b = image_bytes(color=1), image_bytes(color=2)
    fields = builder.build({"name": "shoes", "photos": [a, b], "back": "https://x/b.png"})
    system, user = fields["messages"]
    assert system == {"role": "system", "content": "Be brief."}
    kinds = [(p["type"], p.get("text") or p["image_url"]["url"][:15]) for p in user["content"]]
    assert kinds == [
        ("text", "Compare shoes:"),
        ("image_url", "data:image/png;"),
        ("image_url", "data:image/png;"),
        ("text", "and"),
        ("image_url", "https://x/b.png"),
    ]


def _doc(**changes):
    doc = {
        "input": {"format": "parquet", "path": "in", "id_column": "id"},
        "output": {"path": "out"},
        "endpoint": {"model": "m"},
        "prompt": {"content": [{"image": "photo"}, {"text": "What is {{ name }}?"}]},
    }
    doc.update(changes)
    return doc


def test_the_spec_reads_image_columns_and_refuses_mixed_or_empty_prompts():
    spec = spec_from_dict(_doc())
    assert spec.prompt_columns() == ["name", "photo"]
    with pytest.raises(SpecError, match="exactly one of prompt.template, prompt.column and"):
        spec_from_dict(_doc(prompt={"template": "x", "content": [{"text": "y"}]}))
    with pytest.raises(SpecError, match=r"prompt.content.0.image: expected non-empty text, got ''"):
        spec_from_dict(_doc(prompt={"content": [{"image": ""}]}))
    with pytest.raises(SpecError, match=r"content.0.*\{text: TEMPLATE\} or \{image: COLUMN\}"):
        spec_from_dict(_doc(prompt={"content": [{"text": "x", "image": "photo"}]}))
    with pytest.raises(SpecError, match="prompt.content"):
        spec_from_dict(_doc(prompt={"content": []}))
    with pytest.raises(SpecError, match="prompt.content .* is for task 'chat'"):
        spec_from_dict(_doc(task="completion"))
    with pytest.raises(
        SpecError, match=r"prompt.content \(image\): column\(s\) \['photo'\] not in the input"
    ):
        spec_from_dict(_doc()).check_columns(["id", "name"])


def test_binary_file_input_is_sparks_source():
    spec = spec_from_dict(_doc(input={"format": "binaryFile", "path": "imgs", "id_column": "path"}))
    assert spec.input.format == "binaryFile"


def test_lora_spec_one_way_and_generating_jobs_only():
    spec = spec_from_dict(_doc(lora={"column": "adapter", "modules": {"beta": "/m/beta"}}))
    assert spec.lora is not None and spec.lora.modules == {"beta": "/m/beta"}
    with pytest.raises(SpecError, match=r"lora.adapter \('a'\) and lora.column \('b'\) are both"):
        spec_from_dict(_doc(lora={"adapter": "a", "column": "b"}))
    with pytest.raises(SpecError, match="lora.column: expected non-empty text, got ''"):
        spec_from_dict(_doc(lora={"column": ""}))
    with pytest.raises(SpecError, match="lora.adapter .* or lora.column"):
        spec_from_dict(_doc(lora={}))
    with pytest.raises(SpecError, match="'bad name' is not an adapter name"):
        spec_from_dict(_doc(lora={"adapter": "a", "modules": {"bad name": "/x"}}))
    with pytest.raises(SpecError, match="lora is for generating tasks .* not task 'embedding'"):
        spec_from_dict(
            _doc(task="embedding", prompt={"template": "{{ name }}"}, lora={"adapter": "a"})
        )
    with pytest.raises(SpecError, match=r"lora.column: column\(s\) \['adapter'\] not in the input"):
        spec_from_dict(_doc(lora={"column": "adapter"})).check_columns(["id", "name", "photo"])


def test_each_row_names_its_adapter_and_null_means_the_base_model():
    per_row = kind_for(spec_from_dict(_doc(prompt={"template": "{{ q }}"}, lora={"column": "a"})))
    assert "model" not in per_row.request({"q": "hi", "a": None})
    assert next(iter(per_row.request({"q": "hi", "a": "alpha"}).items())) == ("model", "alpha")
    assert per_row.body([per_row.request({"q": "hi", "a": "alpha"})])["model"] == "alpha"
    assert per_row.body([per_row.request({"q": "hi", "a": None})])["model"] == "m"
    with pytest.raises(
        RowError, match=r"lora.column 'a': expected an adapter name or null, got int"
    ):
        per_row.request({"q": "hi", "a": 3})
    fixed = kind_for(spec_from_dict(_doc(prompt={"template": "{{ q }}"}, lora={"adapter": "beta"})))
    assert fixed.body([fixed.request({"q": "hi"})])["model"] == "beta"


def test_the_fingerprint_holds_content_and_adapters_only_when_set():
    plain = fingerprint(spec_from_dict(_doc(prompt={"template": "{{ q }}"})))
    assert not any(k.startswith(("lora", "prompt.content")) for k in plain)
    found = fingerprint(spec_from_dict(_doc(lora={"column": "a"})))
    assert found["prompt.content"] == [{"image": "photo"}, {"text": "What is {{ name }}?"}]
    assert (found["lora.adapter"], found["lora.column"]) == (None, "a")


def test_image_and_adapter_columns_of_a_type_no_row_could_use_are_refused():
    from pyspark.sql import types as T

    from spark_vllm.driver.job import check_column_types

    def schema(**kinds):
        return T.StructType([T.StructField(n, k) for n, k in kinds.items()])

    spec = spec_from_dict(_doc(lora={"column": "adapter"}))
    ok = [T.BinaryType(), T.StringType(), T.ArrayType(T.BinaryType()), T.ArrayType(T.StringType())]
    for kind in ok:
        check_column_types(spec, schema(photo=kind, name=T.StringType(), adapter=T.StringType()))
    with pytest.raises(SpecError, match="image column 'photo' is bigint; expected binary"):
        check_column_types(spec, schema(photo=T.LongType(), adapter=T.StringType()))
    with pytest.raises(SpecError, match="image column 'photo' is array<int>"):
        check_column_types(spec, schema(photo=T.ArrayType(T.IntegerType()), adapter=T.StringType()))
    with pytest.raises(SpecError, match="lora.column 'adapter' is int; expected string"):
        check_column_types(spec, schema(photo=T.BinaryType(), adapter=T.IntegerType()))
