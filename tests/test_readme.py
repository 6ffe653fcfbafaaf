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
