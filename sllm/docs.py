"""The documentation shipped with sllm: docs/*.md of the source tree, installed into the
wheel as sllm/docs/ (CMakeLists.txt), so `sllm docs NAME` works from `pip install sllm`."""
from __future__ import annotations

import re
import sys
from pathlib import Path

from .errors import SLLMError


def doc_dirs() -> list[Path]:
    """Where the docs may be: the installed package's sllm/docs/ (an editable install keeps
    it in site-packages), or docs/ next to the package in a source checkout."""
    package = Path(__file__).resolve().parent
    return [package / "docs", package.parent / "docs",
            *(Path(p) / "sllm" / "docs" for p in sys.path if p)]


def topics() -> dict[str, Path]:
    """Every shipped page, by name (the file name without .md)."""
    found: dict[str, Path] = {}
    for folder in doc_dirs():
        if folder.is_dir():
            for page in sorted(folder.glob("*.md")):
                found.setdefault(page.stem, page)
    return found


# The markers tests/test_docs.py reads before each example: for the test, not the reader.
_TEST_MARKER = re.compile(r"^<!-- doc-test:.*-->\n", re.MULTILINE)


def read(topic: str) -> str:
    """The text of one page; an unknown name raises SLLMError listing the pages."""
    pages = topics()
    if topic not in pages:
        raise SLLMError(f"no documentation page {topic!r}; pages: {', '.join(pages) or 'none'}")
    return _TEST_MARKER.sub("", pages[topic].read_text(encoding="utf-8"))
