"""Images of a row, as the chat-completions API's `image_url` content parts.

A column of `prompt.content`'s image part holds, per row, one image or a list of them:

- bytes (a binary column, e.g. `content` of Spark's binaryFile source): sent as a data URL
  whose media type is the one Pillow recognises (PNG, JPEG, GIF, WebP, BMP, TIFF…);
- an `http(s)://` URL: sent as it is; vLLM fetches it (and applies its own limits);
- a `data:image/…;base64,…` URL: sent as it is, once its bytes pass the checks below;
- any other string: a path the task reads with Arrow's file systems (a local path, file://,
  s3:// or s3a:// with the AWS credential chain, gs://, hdfs:// where libhdfs is installed),
  then as bytes above — only under one of the prefixes the spec allows
  (`prompt.image_prefixes`, none by default): a row's value must not make the task read
  whatever the job's account can read.

Every way an image can be wrong for one row raises RowError, which makes that row an error
row: a null, an image over `max_bytes` (size and limit named; a file's size is checked
before it is read, and no more than that is read), a path outside the allowed prefixes or
that cannot be read, bytes that are not an image. The text names the column, never the
value: not the path, not the bytes.
"""

from __future__ import annotations

import base64
import io
import os
import posixpath
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any
from urllib.parse import urlparse

from spark_vllm.errors import RowError

# Schemes of paths Arrow reads under another name: Hadoop's S3 connectors.
_ARROW_SCHEME = {"s3a": "s3", "s3n": "s3"}
_ARROW_SCHEMES = frozenset({"", "file", "s3", "gs", "gcs", "hdfs", "viewfs"})


def _describe(size: int) -> str:
    return f"{size:,} bytes"


# Pillow's own words for a damaged image, kept when they are only words (some of its
# messages quote bytes of the file).
_WORDS = re.compile(r"[A-Za-z][A-Za-z ]{0,80}")


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
        raise RowError(
            f"{where}: the {_describe(len(data))} are not an image Pillow recognises; "
            "expected PNG, JPEG, GIF, WebP, BMP or TIFF bytes"
        ) from None
    except Exception as exc:  # Pillow raises many kinds for a damaged file
        said = str(exc)
        why = said if _WORDS.fullmatch(said) else type(exc).__name__
        raise RowError(f"{where}: the {fmt or 'image'} is damaged: {why}") from None
    mime = Image.MIME.get(fmt or "")
    if mime is None:
        raise RowError(f"{where}: Pillow reads it as {fmt}, which has no image media type")
    return mime


def data_url(data: bytes, where: str, max_bytes: int) -> str:
    """`data:<media type>;base64,…` for image bytes; RowError for too many or no image."""
    if len(data) > max_bytes:
        raise RowError(_too_big(where, _describe(len(data)), max_bytes))
    mime = _media_type(data, where)
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


@lru_cache(maxsize=32)
def _file_system(scheme: str, netloc: str) -> Any:
    import pyarrow.fs as pafs

    if scheme in ("", "file"):
        return pafs.LocalFileSystem()
    return pafs.FileSystem.from_uri(f"{scheme}://{netloc}/")[0]


def _location(path: str, where: str) -> tuple[str, str, str]:
    """(Arrow's scheme, netloc, the path within it) of a path or URL, normalised: `..`
    resolved, a local path made absolute with its symbolic links followed."""
    parsed = urlparse(path)
    scheme = parsed.scheme.lower()
    if len(scheme) == 1:  # a Windows drive letter, not a scheme
        scheme = ""
    scheme = _ARROW_SCHEME.get(scheme, scheme)
    if scheme not in _ARROW_SCHEMES:
        raise RowError(
            f"{where}: the path's scheme is not one the task reads (local, file, s3, s3a, "
            "gs, hdfs); read such files with input.format binaryFile and name its content "
            "column instead"
        )
    if scheme in ("", "file"):
        local = parsed.path if scheme == "file" else path
        return "", "", os.path.realpath(local)
    return scheme, parsed.netloc, posixpath.normpath("/" + parsed.path.lstrip("/"))


def allowed(path: str, prefixes: Sequence[str]) -> bool:
    """Whether `path` lies under one of `prefixes` (whole path segments: `s3://b/img`
    allows `s3://b/img/a.png`, not `s3://b/img2/a.png`); a path that cannot be placed is
    not."""
    try:
        found = _location(path, "")
    except RowError:
        return False
    for prefix in prefixes:
        try:
            scheme, netloc, inner = _location(prefix, "")
        except RowError:
            continue
        if (scheme, netloc) != found[:2]:
            continue
        base = inner.rstrip("/")
        if found[2] == base or found[2].startswith(base + "/"):
            return True
    return False


def read_path(path: str, where: str, max_bytes: int, prefixes: Sequence[str] = ()) -> bytes:
    """The bytes of the file at `path`, read by this task (see the module's text)."""
    if not allowed(path, prefixes):
        _location(path, where)  # a scheme the task cannot read says so first
        raise RowError(
            f"{where}: holds a path, and the task reads image files only under "
            "prompt.image_prefixes"
            + (" (none is listed)" if not prefixes else " (the path is under none of them)")
            + "; list the folder there, or send images as bytes or http(s)/data URLs"
        )
    scheme, netloc, inner = _location(path, where)
    if scheme:
        inner = f"{netloc}{inner}"
    try:
        import pyarrow.fs as pafs

        fs = _file_system(scheme, netloc)
        info = fs.get_file_info(inner)
        if info.type == pafs.FileType.NotFound:
            raise RowError(f"{where}: cannot read the path: no such file")
        if info.type != pafs.FileType.File:
            raise RowError(f"{where}: cannot read the path: not a file")
        if info.size is not None and info.size > max_bytes:
            raise RowError(_too_big(where, _describe(info.size), max_bytes))
        with fs.open_input_file(inner) as handle:
            data = bytes(handle.read(max_bytes + 1))
    except RowError:
        raise
    except Exception as exc:  # Arrow's OSError, ArrowInvalid, a missing libhdfs, …
        raise RowError(f"{where}: cannot read the path ({type(exc).__name__})") from None
    if len(data) > max_bytes:
        raise RowError(_too_big(where, None, max_bytes))
    return data


def _too_big(where: str, size: str | None, max_bytes: int) -> str:
    has = f"has {size}, more than" if size is not None else "is larger than"
    return f"{where}: the image {has} prompt.max_image_bytes ({_describe(max_bytes)})"


def _checked_data_url(text: str, where: str, max_bytes: int) -> str:
    """A `data:image/…;base64,…` URL as it is, once its bytes passed the checks bytes get."""
    head, comma, payload = text.partition(",")
    if not head.lower().startswith("data:image/") or not head.lower().endswith(";base64"):
        raise RowError(f"{where}: a data URL must be data:image/<type>;base64,<bytes>")
    if not comma:
        raise RowError(f"{where}: the data URL has no ',' before its bytes")
    size = len(payload) // 4 * 3 - min(len(payload) - len(payload.rstrip("=")), 2)
    if size > max_bytes:  # before decoding it
        raise RowError(_too_big(where, _describe(size), max_bytes))
    try:
        data = base64.b64decode(payload, validate=True)
    except ValueError:
        raise RowError(f"{where}: the data URL's bytes are not valid base64") from None
    data_url(data, where, max_bytes)  # the size limit, and that they are an image
    return text


def image_url(value: Any, where: str, max_bytes: int, prefixes: Sequence[str] = ()) -> str:
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
        return data_url(read_path(text, where, max_bytes, prefixes), where, max_bytes)
    raise RowError(
        f"{where}: expected image bytes, a path or a URL (or a list of them), got "
        f"{type(value).__name__}"
    )


def image_parts(
    value: Any, column: str, max_bytes: int, prefixes: Sequence[str] = ()
) -> list[dict[str, Any]]:
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
        url = image_url(item, where, max_bytes, prefixes)
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return parts
