"""Run benchmark parts: `python -m benchmarks [all | PART ...] [--markdown BENCHMARKS.md] [--quick]`."""

from __future__ import annotations

import argparse
import logging
import os

from allocsearch.app.config import default_cache_dir

from . import (
    build,
    core,
    encoder,
    evolution,
    goals,
    mainjob,
    parallel,
    quality,
    solvers,
    study,
    tables,
)

PARTS = {"mainjob": mainjob, "tables": tables, "build": build, "core": core, "quality": quality,
         "evolution": evolution, "study": study, "solvers": solvers, "parallel": parallel,
         "encoder": encoder, "goals": goals}  # goals last: it reads what the others wrote


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", default=["all"], help=f"all, or any of {', '.join(PARTS)}")
    parser.add_argument("--markdown", help="write each part's section of this file (BENCHMARKS.md)")
    parser.add_argument("--cache", default=str(default_cache_dir()), help="cache directory (models, supernets)")
    parser.add_argument("--quick", action="store_true", help="leave out the pretrained 135M model")
    parser.add_argument("--generations", type=int, default=50, help="evolution: generations per run")
    parser.add_argument("--trials", type=int, default=200, help="study: trials")
    parser.add_argument("--candidates", type=int, default=48, help="parallel: candidates per runner")
    args = parser.parse_args()
    names = list(PARTS) if "all" in args.parts else args.parts
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        parser.error(f"unknown part {', '.join(unknown)}; choose from all, {', '.join(PARTS)}")
    os.environ.setdefault("ALLOCSEARCH_NO_PROGRESS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    for name in names:
        PARTS[name].run(args).publish(args.markdown)


if __name__ == "__main__":
    main()
