"""allocsearch's benchmarks: `python -m benchmarks [all | PART ...] [--markdown BENCHMARKS.md]`.

Each part prints its tables, writes `benchmarks/results/PART.json` (and its plots, PNG, beside it)
and, with `--markdown`, its section of BENCHMARKS.md. Parts: mainjob, tables, build, core,
quality, evolution, study, solvers, parallel, encoder (the
objectives on a real sentence encoder), and goals (the issue's goals against the figures the
others wrote). `--quick` leaves out the pretrained 135M model.
"""
