"""The README's commands are the ones CI and users run."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    extracted = subprocess.run(
        ["bash", "-c", "awk '/<!-- test-command/ {found = 1; next} found && /^```/ {if (open) exit; open = 1; next} "
                       "open {print; exit}' README.md"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "pytest" in extracted and "-c constraints-cpu.txt" in extracted
    assert "awk '/<!-- test-command/" in (ROOT / ".ci" / "run").read_text()
    assert "allocsearch search --budget flops=0.5 --out result.json --export pruned-model" in readme


def test_constraints_pin_the_cpu_torch():
    assert "torch==2.13.0" in (ROOT / "constraints-cpu.txt").read_text().splitlines()


def test_the_layout_section_names_every_module():
    """"How the code is laid out" matches the tree: each module of the package is named under its folder."""
    section = (ROOT / "README.md").read_text().split("## How the code is laid out", 1)[1].split("\n## ", 1)[0]
    folder, named = "", set()
    for line in section.split("```")[1].splitlines():
        words, depth = line.split(), (len(line) - len(line.lstrip())) // 2
        if not words or depth == 0:
            continue
        if depth == 1:
            folder = words[0] if words[0].endswith("/") else ""
        named |= {(folder if depth == 2 else "") + w for w in words if w.endswith(".py")}
    package = ROOT / "allocsearch"
    modules = {str(p.relative_to(package)) for p in package.rglob("*.py") if "__pycache__" not in p.parts}
    assert named == {m for m in modules if m == "__init__.py" or not m.endswith("__init__.py")}
