"""How many tokens the supernet build needs: the lsq refit's fit to calibration text against held-out text.

Uniform allocation at 80% of the FLOPs on SmolLM2-135M (structured, lsq), the build learning from
8 to 384 windows of 128 tokens (the widest refit, the MLP's down projection, has 1,536 inputs). The
first row is the set-up before the build had its own token budget: the build and the fitness on the
same 8 windows. The others score fitness on the default 128 calibration windows. The default build is
16 tokens per input of the widest refit: 192 windows.
"""

from __future__ import annotations

from allocsearch import RunConfig, Session, search

from ._common import Report, table

BUILDS = ((8, 8), (8, 128), (32, 128), (128, 128), (None, 128), (384, 128))


def run(args) -> Report:
    from .realmodel import real_model_dir

    model = str(real_model_dir(args.cache))
    rows, data = [], []
    for build, calib in BUILDS:
        session = Session(RunConfig(model=model, cache_dir=args.cache, build_sequences=build, calib_sequences=calib),
                          progress=False)
        build_seconds = session.supernet.manifest["build_seconds"]  # as built, when the cache had it already
        r = search("flops=0.8", method="uniform", seed=0, session=session, progress=False)
        windows = len(session.build_tokens)
        label = f"{windows}" + (" (default)" if build is None else "") + (", fitness on the same windows" if
                                                                         calib == build else "")
        rows.append([label, calib, f"{build_seconds:.0f}", f"{r.fitness:.4f}", f"{r.heldout_fitness:.4f}",
                     f"{r.heldout_fitness / r.fitness:.2f}x", f"{r.heldout:.2f}"])
        data.append({"build_sequences": windows, "calib_sequences": calib, "build_seconds": build_seconds,
                     "calib_kl": r.fitness, "heldout_kl": r.heldout_fitness, "heldout_ppl": r.heldout,
                     "dense_ppl": r.dense_heldout})
    text = table(["build windows", "fitness windows", "build (s)", "calib KL", "held-out KL", "held-out / calib",
                  "held-out ppl"], rows) + f"\n\nDense held-out perplexity {data[0]['dense_ppl']:.2f}."
    return Report("build", "Build tokens: the refit against held-out text (SmolLM2-135M)",
                  "uniform at flops=0.8, structured lsq, seed 0; 128 held-out windows.", text, {"builds": data})
