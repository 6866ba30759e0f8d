"""Images of a row, as the chat-completions API's `image_url` content parts.

A column of `prompt.content`'s image part holds, per row, one image or a list of them:

- bytes (a binary column, e.g. `content` of Spark's binaryFile source): sent as a data URL
  whose media type is the one Pillow recognises (PNG, JPEG, GIF, WebP, BMP, TIFF…);
- an `http(s)://` URL: sent as it is; vLLM fetches it (and applies its own limits);
- a `data:image/…;base64,…` URL: sent as it is, once its bytes pass the checks below;
- any other string: a path the task reads with Arrow's file systems (a local path, file://,
  s3:// or s3a:// with the AWS credential chain, gs://, hdfs:// where libhdfs is installed),
  then as bytes above.

Every way an image can be wrong for one row raises RowError, which makes that row an error
row: a null, an image over `max_bytes` (size and limit named), a path that cannot be read,
bytes that are not an image.
"""

from __future__ import annotations

import base64
import io
import os
from functools import lru_cache
from typing import Any
from urllib.parse import urlparse

from spark_vllm.errors import RowError

# Schemes of paths Arrow reads under another name: Hadoop's S3 connectors.
_ARROW_SCHEME = {"s3a": "s3", "s3n": "s3"}
_ARROW_SCHEMES = frozenset({"", "file", "s3", "gs", "gcs", "hdfs", "viewfs"})


def _describe(size: int) -> str:
    return f"{size:,} bytes"


def _media_type(data: bytes, where: str) -> str:
    """The image's media type, from its own bytes; RowError when they are not an image
    Pillow can read to the end of its header and structure."""
    from PIL import Image, UnidentifiedImageError

    fmt = None
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = image.format
            image.verify()
    except UnidentifiedImageError:
        head = data[:8].hex(" ")
        raise RowError(
            f"{where}: the {_describe(len(data))} are not an image Pillow recognises "
            f"(they start {head or 'empty'}); expected PNG, JPEG, GIF, WebP, BMP or TIFF bytes"
        ) from None
    except Exception as exc:  # Pillow raises many kinds for a damaged file
        raise RowError(f"{where}: the {fmt or 'image'} is damaged: {exc}") from None
    mime = Image.MIME.get(fmt or "")
    if mime is None:
        raise RowError(f"{where}: Pillow reads it as {fmt}, which has no image media type")
    return mime


def data_url(data: bytes, where: str, max_bytes: int) -> str:
    """`data:<media type>;base64,…` for image bytes; RowError for too many or no image."""
    if len(data) > max_bytes:
        raise RowError(
            f"{where}: the image has {_describe(len(data))}, more than "
            f"prompt.max_image_bytes ({_describe(max_bytes)})"
        )
    mime = _media_type(data, where)
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


@lru_cache(maxsize=32)
def _file_system(scheme: str, netloc: str) -> Any:
    import pyarrow.fs as pafs

    if scheme in ("", "file"):
        return pafs.LocalFileSystem()
    return pafs.FileSystem.from_uri(f"{scheme}://{netloc}/")[0]


def read_path(path: str, where: str, max_bytes: int) -> bytes:
    """The bytes of the file at `path`, read by this task (see the module's text)."""
    parsed = urlparse(path)
    scheme = parsed.scheme.lower()
    if len(scheme) == 1:  # a Windows drive letter, not a scheme
        scheme = ""
    scheme = _ARROW_SCHEME.get(scheme, scheme)
    if scheme not in _ARROW_SCHEMES:
        raise RowError(
            f"{where}: cannot read {path!r}: scheme {parsed.scheme!r} is not one the task "
            "reads (local, file, s3, s3a, gs, hdfs); read such files with input.format "
            "binaryFile and name its content column instead"
        )
    if scheme in ("", "file"):
        local = parsed.path if scheme == "file" else path
        inner = os.path.abspath(local)
    else:
        inner = f"{parsed.netloc}{parsed.path}"
    try:
        fs = _file_system(scheme, parsed.netloc)
        info = fs.get_file_info(inner)
        import pyarrow.fs as pafs

        if info.type == pafs.FileType.NotFound:
            raise RowError(f"{where}: cannot read {path!r}: no such file")
        if info.type != pafs.FileType.File:
            raise RowError(f"{where}: cannot read {path!r}: not a file")
        if info.size is not None and info.size > max_bytes:
            raise RowError(
                f"{where}: the image at {path!r} has {_describe(info.size)}, more than "
                f"prompt.max_image_bytes ({_describe(max_bytes)})"
            )
        with fs.open_input_file(inner) as handle:
            return bytes(handle.read())
    except RowError:
        raise
    except Exception as exc:  # Arrow's OSError, ArrowInvalid, a missing libhdfs, …
        raise RowError(f"{where}: cannot read {path!r}: {exc}") from None


def _checked_data_url(text: str, where: str, max_bytes: int) -> str:
    """A `data:image/…;base64,…` URL as it is, once its bytes passed the checks bytes get."""
    head, comma, payload = text.partition(",")
    if not head.lower().startswith("data:image/") or not head.lower().endswith(";base64"):
        raise RowError(
            f"{where}: a data URL must be data:image/<type>;base64,<bytes>, got {text[:30]!r}"
        )
    if not comma:
        raise RowError(f"{where}: the data URL has no ',' before its bytes")
    try:
        data = base64.b64decode(payload, validate=True)
    except ValueError:
        raise RowError(f"{where}: the data URL's bytes are not valid base64") from None
    data_url(data, where, max_bytes)  # the size limit, and that they are an image
    return text


def image_url(value: Any, where: str, max_bytes: int) -> str:
    """The URL that sends one image value (see the module's text)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return data_url(bytes(value), where, max_bytes)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise RowError(f"{where}: the image path is empty")
        lower = text[:11].lower()
        if lower.startswith(("http://", "https://")):
            return text
        if lower.startswith("data:"):
            return _checked_data_url(text, where, max_bytes)
        return data_url(read_path(text, where, max_bytes), f"{where} ({text!r})", max_bytes)
    raise RowError(
        f"{where}: expected image bytes, a path or a URL (or a list of them), got "
        f"{type(value).__name__}"
    )


def image_parts(value: Any, column: str, max_bytes: int) -> list[dict[str, Any]]:
    """The `image_url` parts of one row's value of an image column (one, or one per item of
    a list); RowError for a null, an empty list, or any item that cannot be sent."""
    if value is None:
        raise RowError(f"image column {column!r} is null")
    values = list(value) if isinstance(value, list | tuple) else [value]
    if not values:
        raise RowError(f"image column {column!r} holds an empty list")
    parts = []
    for i, item in enumerate(values):
        where = f"image column {column!r}" + (f" item {i}" if len(values) > 1 else "")
        if item is None:
            raise RowError(f"{where} is null")
        parts.append({"type": "image_url", "image_url": {"url": image_url(item, where, max_bytes)}})
    return parts
