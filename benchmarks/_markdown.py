"""Each benchmark owns one section of BENCHMARKS.md, between `<!-- NAME -->` and `<!-- /NAME -->`."""

from __future__ import annotations

import re
from pathlib import Path

HEADER = "# Benchmarks\n\nEach section is written by one script in `benchmarks/`, from one run.\n"


def write_section(path: str | Path, name: str, text: str) -> None:
    path = Path(path)
    current = path.read_text() if path.is_file() else HEADER
    block = f"<!-- {name} -->\n{text.rstrip()}\n<!-- /{name} -->"
    pattern = re.compile(rf"<!-- {re.escape(name)} -->.*?<!-- /{re.escape(name)} -->", re.S)
    updated = pattern.sub(lambda _: block, current) if pattern.search(current) else current.rstrip() + "\n\n" + block
    path.write_text(updated + "\n")


def publish(text: str, markdown: str | Path | None, name: str, title: str, how: str) -> None:
    """Print a benchmark's text and, when asked, write it as its section of the markdown file."""
    print(text)
    if markdown:
        write_section(markdown, name, f"## {title}\n\n`python benchmarks/{name}.py --markdown BENCHMARKS.md`; "
                                      f"{how}\n\n{text}")
