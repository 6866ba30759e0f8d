"""MkDocs hook (mkdocs.yml `hooks:`): links from the manual to the repository's own files
(`../examples/jobs/chat.yaml`, `../charts/spark-vllm/README.md`), which lie outside docs/
and so outside the site. On GitHub they are relative links and work as they are; in the
built site each becomes the file's path as code (there is no public repository address to
link to). A link to a file that does not exist is a warning, which `mkdocs build --strict`
turns into a failed build, like a broken link between pages."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.repo_links")

LINK = re.compile(r"\[([^\]]+)\]\(((?:\.\./)+[^)\s#]*)(#[^)\s]*)?\)")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    docs = Path(config["docs_dir"]).resolve()
    root = docs.parent
    here = (docs / page.file.src_path).parent

    def repo_link(match: re.Match[str]) -> str:
        label, target = match.group(1), match.group(2)
        path = (here / target).resolve()
        if path.is_relative_to(docs):
            return match.group(0)  # a page of the manual: MkDocs checks it
        if not path.is_relative_to(root) or not path.exists():
            where = page.file.src_path
            log.warning("%s links to %s, which is not a file of the repository", where, target)
            return match.group(0)
        shown = path.relative_to(root).as_posix() + ("/" if path.is_dir() else "")
        return label if label.strip("`") == shown.rstrip("/") else f"{label} (`{shown}`)"

    return LINK.sub(repo_link, markdown)
