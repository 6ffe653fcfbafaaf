"""Crash tests of the optuna method in real processes: SIGKILL at a chosen point of a study, the same
command run again, and the study and the result are those of a run never killed.

The process killed is the CLI run through this module, `python -m tests.hardening.test_optuna_resume
POINT N MARKER CLI-ARGS...`: it makes POINT wait for ever the N-th time it is reached, after writing the
file MARKER; the test waits for that file and kills the process there, so the kill lands where it is
meant to and never by a race. The points:

- `write`: just after the N-th trial is written to storage (a batch part-written);
- `tell`: just before the searcher's N-th `tell` (a batch measured, nothing of it stored);
- `told`: just after the N-th trial is told (a batch part-told);
- `report`: just after the N-th first score is stored (multi-fidelity: a first pass part-stored);
- `sample`: just before batch N is sampled (between batches: nothing of it written).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from functools import wraps
from pathlib import Path

import optuna
import pytest
from optuna.storages import RDBStorage

from ..tiny import tiny_args

ROOT = Path(__file__).resolve().parents[2]
COMMON = ["search", "--method", "optuna", "--budget", "flops=0.5", "--seed", "5", "--trials", "12", "--batch", "4",
          "--study", "s"]
PRUNE = ["--prune", "0.5", "--keep", "0.5"]


def cli(directory: Path, args: list[str], pause: tuple[str, int, Path] | None = None) -> subprocess.Popen:
    """The search CLI writing `directory`/s.db and result.json; paused (see the module notes) if asked."""
    directory.mkdir(exist_ok=True)
    where = ["--storage", f"sqlite:///{directory}/s.db", "--out", str(directory / "result.json")]
    head = ["-m", "allocsearch.cli"] if pause is None else ["-m", __name__, pause[0], str(pause[1]), str(pause[2])]
    env = {**os.environ, "ALLOCSEARCH_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, *head, "-q", *args, *where], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output


def trials(directory: Path) -> list[tuple]:
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{directory}/s.db")
    return [(t.number, t.state, t.params, t.values, t.intermediate_values, t.user_attrs) for t in study.trials]


def batch_states(directory: Path) -> str:
    """The study's trial states, batch by batch, in letters sorted within each batch ("CCPP RRRR")."""
    batches: dict[int, str] = {}
    for t in trials(directory):
        batches[t[5]["batch"]] = batches.get(t[5]["batch"], "") + t[1].name[0]
    return " ".join("".join(sorted(letters)) for letters in batches.values())


def result(directory: Path) -> dict:
    data = json.loads((directory / "result.json").read_text())
    for key in ("seconds", "stages"):  # wall times and memory peaks
        data.pop(key)
    data["options"].pop("storage")  # each run has its own directory
    return data


@pytest.fixture(scope="module")
def reference(model_dirs, cache_dir, tmp_path_factory):
    """Runs never killed, with and without a first pass on few tokens: (args, directory) by name."""
    made = {}
    for name, extra in (("plain", []), ("pruned", PRUNE)):
        args = [*COMMON, *extra, *tiny_args(model_dirs, cache_dir)]
        directory = tmp_path_factory.mktemp(f"whole-{name}")
        finish(cli(directory, args))
        made[name] = args, directory
    return made


@pytest.mark.slow  # a crash test: SIGKILL of real processes, a dozen CLI runs
@pytest.mark.parametrize("kind, point, n, states", [  # states: per batch, C complete, P pruned, R running
    ("plain", "write", 2, "RR"),  # inside the first batch's writing: the warm starts are written
    ("plain", "tell", 2, "CCCC RRRR"),  # the second batch measured, nothing of it stored
    ("plain", "told", 6, "CCCC CCRR"),  # the second batch half told
    ("plain", "sample", 2, "CCCC CCCC"),  # between batches
    ("pruned", "report", 6, "CCPP RRRR"),  # the second batch's first pass half stored
])
def test_a_study_killed_and_run_again_is_the_uninterrupted_one(reference, kind, point, n, states, tmp_path):
    args, whole = reference[kind]
    killed, marker = tmp_path / "killed", tmp_path / "paused"
    victim = cli(killed, args, pause=(point, n, marker))
    deadline = time.time() + 120
    while not marker.exists():
        assert victim.poll() is None, victim.communicate()[0]
        assert time.time() < deadline, "the run never reached the point where it is killed"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert batch_states(killed) == states and not (killed / "result.json").exists()
    if point == "report":
        assert sum(bool(t[4]) for t in trials(killed)[4:]) == 2  # two first scores of the second batch stored
    finish(cli(killed, args))  # the same command again
    assert trials(killed) == trials(whole)  # params, states, values, first scores, attributes, in order
    again, once = result(killed), result(whole)
    assert again == once  # levels, fitness, held-out scores, and the history of every run of the study
    assert again["evaluations"] == len(again["history"]) == (12 + 6 if kind == "pruned" else 12)
    assert sorted(p.name for p in killed.iterdir()) == ["result.json", "s.db"]  # no journal or temporary file


# -- the process a test kills ------------------------------------------------------------------------


def _pause(owner, name: str, n: int, marker: Path, *, after: bool, counts=lambda *args: True) -> None:
    """Make `owner.name` wait for ever the `n`-th time it is called (counting calls `counts` accepts),
    before or after it runs, once `marker` is written."""
    original, calls = getattr(owner, name), [0]

    @wraps(original)
    def paused(*args, **kwargs):
        calls[0] += counts(*args)
        here = calls[0] == n and counts(*args)
        if here and not after:
            _wait(marker)
        out = original(*args, **kwargs)
        if here and after:
            _wait(marker)
        return out

    setattr(owner, name, paused)


def _wait(marker: Path) -> None:
    marker.write_text("paused")
    time.sleep(3600)


def _main(point: str, n: int, marker: Path, argv: list[str]) -> int:
    from allocsearch.cli import main
    from allocsearch.searchers.optuna import OptunaStudy

    if point == "write":
        _pause(RDBStorage, "_create_new_trial", n, marker, after=True)  # what the cache calls
    elif point == "tell":
        _pause(OptunaStudy, "tell", n, marker, after=False)
    elif point == "told":
        _pause(RDBStorage, "set_trial_state_values", n, marker, after=True)
    elif point == "report":
        _pause(RDBStorage, "set_trial_intermediate_value", n, marker, after=True)
    else:  # sample: batch n, whatever batches came before it
        _pause(OptunaStudy, "_sample", 1, marker, after=False, counts=lambda study, k, before: k == n)
    return main(argv)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:]))
