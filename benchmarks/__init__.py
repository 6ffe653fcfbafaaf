"""allocsearch's benchmarks: `python -m benchmarks [all | PART ...] [--markdown BENCHMARKS.md]`.

Each part prints its tables, writes `benchmarks/results/PART.json` (and its plots, PNG, beside it)
and, with `--markdown`, its section of BENCHMARKS.md. Parts: core, tables, mainjob, quality,
solvers, evolution, study, parallel. `--quick` leaves out the pretrained 135M model.
"""
