"""What every benchmark part shares: its report (markdown + JSON), the models it runs on, timing."""

from __future__ import annotations

import json
import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
HEADER = "# Benchmarks\n\nEach section is written by one part of `python -m benchmarks`, from one run.\n"


@dataclass
class Report:
    """A part's outcome: a markdown body, JSON data and the plots it drew."""

    name: str
    title: str
    how: str  # how it was measured: model, settings, what the numbers mean
    markdown: str
    data: dict = field(default_factory=dict)
    plots: list[Path] = field(default_factory=list)

    def publish(self, markdown_file: str | Path | None, results: Path = RESULTS) -> None:
        """Print the table, write `results/NAME.json` and, when asked, this part's section of the markdown file."""
        print(f"\n## {self.title}\n\n{self.markdown}\n")
        results.mkdir(parents=True, exist_ok=True)
        data = {"part": self.name, "title": self.title, "how": self.how, "machine": machine(),
                "plots": [p.name for p in self.plots], **self.data}
        (results / f"{self.name}.json").write_text(json.dumps(data, indent=2, default=float) + "\n")
        if markdown_file:
            plots = "".join(f"\n![{p.stem}](benchmarks/results/{p.name})" for p in self.plots)
            write_section(markdown_file, self.name, f"## {self.title}\n\n`python -m benchmarks {self.name}`; "
                                                    f"{self.how}\n\n{self.markdown}\n{plots}")


def write_section(path: str | Path, name: str, text: str) -> None:
    """Replace (or append) the section between `<!-- NAME -->` and `<!-- /NAME -->`."""
    path = Path(path)
    current = path.read_text() if path.is_file() else HEADER
    block = f"<!-- {name} -->\n{text.rstrip()}\n<!-- /{name} -->"
    pattern = re.compile(rf"<!-- {re.escape(name)} -->.*?<!-- /{re.escape(name)} -->", re.S)
    updated = pattern.sub(lambda _: block, current) if pattern.search(current) else current.rstrip() + "\n\n" + block
    path.write_text(updated + "\n")


def machine() -> str:
    import torch

    from allocsearch.model._torch import available_cores

    return (f"{platform.machine()}, {available_cores()} cores, torch {torch.__version__}, "
            f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'}")


def timed(fn, *args, **kwargs):
    """(result, seconds)."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def table(header: list[str], rows: list[list]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
