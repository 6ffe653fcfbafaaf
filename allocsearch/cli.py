"""The `allocsearch` command line: search, compare, export, info, query, frontier.

User mistakes print one line, `allocsearch: error: ...`, and exit with status 2: argparse's own
(a bad choice, not a number, a missing flag) as well as the library's, whose parameter names
(`max_level=`) become flags (`--max-level`). Every output path is checked before any model loads.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import socket
import sys
from dataclasses import MISSING, fields
from pathlib import Path

from optuna_dashboard import run_server

from .app.config import RunConfig
from .app.paths import check_output_dir, check_output_file
from .app.planner import Planner
from .app.plot import check_image_path, plot_allocation, plot_frontier
from .app.ray_runner import RAY_TIMEOUT, TIMEOUT_VARIABLE
from .app.search import export, search
from .app.session import Session
from .core.result import Result
from .errors import AllocSearchError, ConfigError
from .model.evaluator import DEFAULT_OBJECTIVE, OBJECTIVES
from .model.export import EXPORT_FORMATS, LAYOUTS
from .model.loading import hide_progress, load_config
from .model.recipes import RECIPE_FORMATS
from .model.spec import load_spec
from .searchers import QUICK, SEARCHERS, get_searcher
from .searchers.optuna import default_storage, open_storage


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line, `allocsearch: error: argument --x: <what>; <fix>`, and status 2."""

    def error(self, message: str):
        fix = f"see `{self.prog} --help`"
        if message.startswith("the following arguments are required"):
            fix = f"add them ({fix})"
        elif message.startswith("unrecognized arguments"):
            fix = f"remove them or check their spelling ({fix})"
        self.exit(2, f"allocsearch: error: {' '.join(message.split())}; {fix}\n")


def _fraction(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; write e.g. 0.5") from None


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; write a whole number, e.g. 8") from None


def _port(text: str) -> int:
    port = _integer(text)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port; choose one from 1 to 65535, e.g. 8080")
    return port


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and search space")
    g.add_argument("--model", help="hub id or local directory (from_pretrained); default: the embedded model")
    g.add_argument("--granularity", choices=["structured", "unstructured"], default="structured")
    g.add_argument("--space", help="family name (gpt2, opt, llama, bert) or your own YAML file")
    g.add_argument("--grid-step", type=_fraction, default=1 / 16, help="level grid step (default 1/16)")
    g.add_argument("--max-level", type=_fraction, help="largest removed fraction (default 1.0 / 0.95)")
    g.add_argument("--channel-multiple", type=_integer, default=1, help="remove MLP channels in multiples of this")
    g.add_argument("--fit", choices=["decilm"], help="only levels an export format holds: decilm (Nemotron-NAS)")
    g.add_argument("--seq-len", type=_integer, default=128,
                   help="tokens per window; FLOPs are per token at this length")
    g.add_argument("--cache", dest="cache_dir", help="cache directory (default $ALLOCSEARCH_CACHE or ~/.cache/allocsearch)")
    g.add_argument("--device", default="auto", help="auto, cpu or cuda")
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    g.add_argument("--threads", type=_integer, help="torch threads per build and evaluation (default: this machine's "
                   "cores; results differ with it in the last digits, and it is recorded)")
    g.add_argument("--workers", type=_integer, default=1,
                   help="evaluate on this many Ray actors (results do not change)")
    g.add_argument("--ray-address", help="join this Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    g.add_argument("--ray-timeout", type=_fraction, help="give up when the cluster's address does not answer "
                   f"within this many seconds (default ${TIMEOUT_VARIABLE}, else {RAY_TIMEOUT:g})")
    g = p.add_argument_group("pruning and data")
    g.add_argument("--criterion", choices=["magnitude", "wanda", "lsq"],
                   help="local pruning criterion (default lsq structured, wanda unstructured)")
    tasks = {"causal_lm": "language models", "encoder": "encoders"}
    g.add_argument("--objective", help="what fitness measures: " + "; ".join(
        f"{', '.join(OBJECTIVES[task])} for {tasks[task]} (default {DEFAULT_OBJECTIVE[task]})" for task in OBJECTIVES))
    g.add_argument("--calib", help="calibration text, UTF-8, one document per line (default: built-in text)")
    g.add_argument("--heldout", help="held-out text, same format (default: built-in text)")
    g.add_argument("--calib-sequences", type=_integer, default=128, help="calibration windows that score candidates")
    g.add_argument("--heldout-sequences", type=_integer, default=128)
    g.add_argument("--build-sequences", type=_integer, help="calibration windows the supernet build learns from "
                   "(default: enough for 16 tokens per input of the widest output projection)")
    g.add_argument("--calib-from", type=_fraction,
                   help="build each block from activations of the model pruned at this level (default: dense)")
    g.add_argument("--damp", type=_fraction, default=0.01, help="damping of the least-squares refit")
    g.add_argument("--batch-size", type=_integer, help="sequences per forward (default 8); fidelities round up to "
                   "whole batches")
    g.add_argument("--topk", type=_integer, help="next-token probabilities kept per position for the reference "
                   "(default: all up to a vocabulary of 4096, else 256)")
    g = p.add_argument_group("error table (dp, admm, the planner)")
    g.add_argument("--table", choices=["exact", "fast", "proxy"], help="exact: every cell measured on all "
                   "calibration tokens; fast: on a share of them; proxy (default): the build's local errors, "
                   "fitted per unit to two measured cells")
    g.add_argument("--table-fidelity", type=_fraction, help="share of calibration batches the fast or proxy "
                   "table's measured cells use (default 1/16)")


def _add_budget(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget", action="append", required=True,
                   help="flops=0.5, params=0.4, memory=300MB (fraction of dense or absolute); repeatable")


def _option_type(annotation: str):
    """The argparse type of an Options field: int, float or str, or a comma-separated tuple of one."""
    base = {"int": _integer, "float": _fraction, "str": str}
    kind = re.search(r"\b(int|float|str)\b", annotation).group(1)
    if annotation.startswith("tuple"):
        def parse(text: str) -> tuple:
            return tuple(base[kind](part.strip()) for part in text.split(",") if part.strip())
        return parse
    return base[kind]


def _method_flags() -> dict[str, list[str]]:
    """Each method's own option names (the fields of its `Options`)."""
    return {name: [f.name for f in fields(cls.Options)] for name, cls in SEARCHERS.items() if cls.Options}


def _add_method_options(p: argparse.ArgumentParser) -> None:
    """One flag per field of each searcher's `Options` dataclass, grouped by method."""
    added: set[str] = set()
    for name, cls in SEARCHERS.items():
        if cls.Options is None:
            continue
        g = p.add_argument_group(f"--method {name}")
        for f in fields(cls.Options):
            if f.name in added:
                continue
            added.add(f.name)
            default = f.default if f.default is not MISSING else None
            if isinstance(default, tuple):
                default = ",".join(str(v) for v in default)
            help_text = f.metadata.get("help", "") + ("" if default is None else f" (default {default})")
            g.add_argument("--" + f.name.replace("_", "-"), type=_option_type(str(f.type)), help=help_text)


def _run_config(args: argparse.Namespace) -> RunConfig:
    names = {f.name for f in fields(RunConfig)}
    return RunConfig(**{k: v for k, v in vars(args).items() if k in names and v is not None})


def _add_quiet(p: argparse.ArgumentParser, default=False) -> None:
    p.add_argument("-q", "--quiet", action="store_true", default=default,
                   help="no progress bars or progress messages (before or after the subcommand)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="allocsearch", description=__doc__.splitlines()[0])
    _add_quiet(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     help=", ".join(("search", "compare", "export", "info", "dashboard", "query",
                                                     "frontier")))

    p = commands.add_parser("search", help="search an allocation within a budget")
    _add_budget(p)
    p.add_argument("--method", default="dp", help=f"searcher: {', '.join(SEARCHERS)} (default dp)")
    p.add_argument("--seed", type=_integer, help="makes the search reproducible (default: drawn and recorded)")
    p.add_argument("--out", default="result.json", help="result file (default result.json)")
    p.add_argument("--export", dest="export_dir", help="also write the pruned model to this directory")
    p.add_argument("--export-format", choices=EXPORT_FORMATS, default="hf", help="hf (default: from_pretrained "
                   "loads it), compressed (unstructured, sparse-bitmask weights) or decilm (vLLM; search with --fit decilm)")
    p.add_argument("--planner", help="add what the search evaluated to this planner file (made if missing)")
    p.add_argument("--plot", help="draw the allocation, a bar per unit, to this PNG file")
    p.add_argument("--max-evaluations", type=_integer, help="stop after this many candidate evaluations")
    p.add_argument("--max-seconds", type=_fraction, help="stop after this much wall time (results then vary)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint of this same command")
    p.add_argument("--checkpoint", help="checkpoint file (default: the --out file + .checkpoint.npz)")
    _add_method_options(p)
    _add_model_options(p)

    p = commands.add_parser("compare", help="run several methods at one budget and tabulate them")
    _add_budget(p)
    p.add_argument("--methods", default=",".join(QUICK), help=f"comma-separated, from {', '.join(SEARCHERS)} "
                   f"(default {','.join(QUICK)}, the ones that take seconds)")
    p.add_argument("--seed", type=_integer, default=0)
    p.add_argument("--out-dir", help="write each method's result.json here")
    _add_model_options(p)

    p = commands.add_parser("export", help="write the pruned model of a result, or its recipe for another tool")
    p.add_argument("--result", required=True, help="result.json written by search")
    p.add_argument("--model", help="the model the search used, when it is not where it was")
    p.add_argument("--out", required=True, help="output directory (a file for the recipe formats)")
    p.add_argument("--format", "--export-format", dest="export_format", choices=[*EXPORT_FORMATS, *RECIPE_FORMATS],
                   default="hf", help="model: hf (default), compressed, decilm; recipe (no model needed): "
                   + ", ".join(RECIPE_FORMATS))

    p = commands.add_parser("info", help="units, levels and dense costs of a model's search space")
    p.add_argument("--errors", action="store_true", help="also compute the error table E[unit, level]")
    _add_model_options(p)

    p = commands.add_parser("dashboard", help="serve optuna-dashboard on 127.0.0.1 for a study's storage")
    p.add_argument("--study", required=True, help="the study name used by search --method optuna")
    p.add_argument("--storage", help="its storage URL (default sqlite:///studies/STUDY.db)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8080)

    p = commands.add_parser("query", help="the best known allocation within a budget, from a planner file")
    p.add_argument("--planner", required=True, help="planner file written by search --planner")
    _add_budget(p)
    p.add_argument("--json", action="store_true", help="print the answer as JSON")

    p = commands.add_parser("frontier", help="plot predicted error against cost: the DP frontier and uniform")
    p.add_argument("--planner", help="planner file (default: made from the model options)")
    p.add_argument("--metric", choices=["flops", "params", "memory"], default="flops")
    p.add_argument("--out", default="frontier.png", help="image file (default frontier.png)")
    _add_model_options(p)
    for sub in commands.choices.values():
        _add_quiet(sub, default=argparse.SUPPRESS)  # -q after the subcommand too
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    flags = _flag_names(parser)
    _log_to_stderr(quiet=args.quiet, flags=flags)
    if args.quiet:
        hide_progress()
    commands = {"search": _search, "compare": _compare, "export": _export, "info": _info, "query": _query,
                "frontier": _frontier, "dashboard": _dashboard}
    try:
        return commands[args.command](args)
    except AllocSearchError as exc:
        print(f"allocsearch: error: {_as_flags(' '.join(str(exc).split()), flags)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("allocsearch: interrupted; finished caches are kept and reused next time", file=sys.stderr)
        return 130


def _flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's parameter name (its dest) -> its flag, over every subcommand."""
    flags = {}
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for sub in commands.choices.values():
        for action in sub._actions:
            if action.option_strings and action.dest not in flags:
                flags[action.dest] = action.option_strings[-1]
    return flags


def _as_flags(message: str, flags: dict[str, str]) -> str:
    """The library names its parameters (`max_level=0.5`); on the command line they are flags (`--max-level 0.5`)."""
    named = re.sub(r"\b([a-z][a-z_]*)=(?!=)", lambda m: f"{flags[m.group(1)]} " if m.group(1) in flags
                   else m.group(0), message)
    return re.sub(r"(--[a-z-]+) (?=[),;]|$)", r"\1", named)  # a flag named without a value: no space after it


class _FlagFormatter(logging.Formatter):
    """Log lines as the CLI speaks: parameters named as flags."""

    def __init__(self, flags: dict[str, str]) -> None:
        super().__init__("allocsearch: %(message)s")
        self.flags = flags

    def format(self, record: logging.LogRecord) -> str:
        return _as_flags(super().format(record), self.flags)


def _log_to_stderr(quiet: bool, flags: dict[str, str]) -> None:
    logger = logging.getLogger("allocsearch")
    if not logger.handlers:
        logger.addHandler(logging.StreamHandler())
    for handler in logger.handlers:
        handler.setFormatter(_FlagFormatter(flags))
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def _session(args: argparse.Namespace) -> Session:
    return Session(_run_config(args), progress=not args.quiet)


def _table(session: Session, results: list[Result]) -> None:
    lm = session.space.task == "causal_lm"
    metric, score = ("KL", "held-out ppl") if lm else ("NMSE", "held-out cosine")
    calib, held = f"calib {metric}", f"held-out {metric}"
    print(f"{'':10}{calib:>14}{held:>15}{score:>17}{'FLOPs ratio':>13}{'params ratio':>14}{'evaluated':>11}"
          f"{'seconds':>9}")
    print(f"{'dense':10}{0.0:>14.4f}{0.0:>15.4f}{results[0].dense_heldout:>17.4f}{1.0:>13.3f}{1.0:>14.3f}")
    for r in results:
        print(f"{r.method:10}{r.fitness:>14.4f}{r.heldout_fitness:>15.4f}{r.heldout:>17.4f}"
              f"{r.cost['flops_ratio']:>13.3f}{r.cost['params_ratio']:>14.3f}{r.evaluations:>11}{r.seconds:>9.1f}")


def _stages_line(stages: dict) -> str:
    return ", ".join(f"{name} {s['seconds']:.1f} s / {s['peak_mb']:.0f} MB" for name, s in stages.items())


def _add_to_planner(path: str, session: Session, results: list[Result]) -> None:
    planner = Planner.load(path) if Path(path).is_file() else Planner.from_session(session)
    for result in results:
        if result.method == "optuna":  # the whole study, earlier runs included
            options = result.options
            planner.add_study(options["study"], options.get("storage"))
        else:
            planner.add_result(result)
    planner.save(path)
    print(f"planner -> {path} ({planner.n_points} evaluated allocations)")


def _method_options(args: argparse.Namespace) -> tuple[dict, str | None]:
    """The method's own options from its flags, and `--init FILE.json` (a start allocation) apart."""
    method_flags = _method_flags()
    given = {name for names in method_flags.values() for name in names if getattr(args, name) is not None}
    stray = given - set(method_flags.get(args.method, ()))
    if stray:
        flags = ", ".join("--" + name.replace("_", "-") for name in sorted(stray))
        raise ConfigError(f"{flags} do not apply to --method {args.method}")
    options = {name: getattr(args, name) for name in method_flags.get(args.method, ()) if name in given}
    init = options.pop("init") if str(options.get("init", "")).endswith(".json") else None
    return options, init


def _default_study(args: argparse.Namespace) -> str:
    """family-granularity-budget, the family read from the model's config (no weights loaded)."""
    model_type = "gpt2" if args.model is None else load_config(args.model).model_type  # the embedded model: GPT-2
    family = load_spec(args.space, model_type)["family"]
    budget = "-".join(b.replace("=", "") for b in args.budget)
    return f"{family}-{args.granularity}-{budget}"


def _check_search_outputs(args: argparse.Namespace) -> None:
    """The CLI's own outputs (the library checks --out, --checkpoint and --export), before any model loads."""
    if args.planner:
        check_output_file("planner", args.planner)
        if Path(args.planner).is_file():
            Planner.load(args.planner)  # a damaged planner fails now, not after the search
    if args.plot:
        check_image_path("plot", args.plot)


def _search(args: argparse.Namespace) -> int:
    _check_search_outputs(args)
    options, init = _method_options(args)
    session = _session(args)
    if args.method == "optuna" and "study" not in options:
        get_searcher("optuna").parse_options(options)  # its mistakes before the model's config is read
        options["study"] = _default_study(args)
    checkpoint = args.checkpoint or f"{args.out}.checkpoint.npz"
    result = search(args.budget, method=args.method, seed=args.seed, session=session, out=args.out,
                    export_dir=args.export_dir, export_format=args.export_format, init=init, method_options=options,
                    checkpoint=checkpoint, resume=args.resume, progress=not args.quiet, workers=args.workers,
                    ray_address=args.ray_address, ray_timeout=args.ray_timeout,
                    max_evaluations=args.max_evaluations, max_seconds=args.max_seconds)
    print(f"\n{result.method} at {','.join(args.budget)} on {session.space.family}, {session.space.granularity}: "
          f"{session.space.n_units} units, seed {result.seed}, {result.seconds:.1f} s in all")
    _table(session, [result])
    print("\nremoved fraction per unit:")
    for name, fraction in result.allocation.items():
        print(f"  {name:40} {fraction:6.3f}")
    print(f"\nstages (time / peak memory): {_stages_line(result.stages)}")
    print(f"\nresult -> {args.out}" + (f"; pruned model -> {args.export_dir}" if args.export_dir else ""))
    if args.planner:
        _add_to_planner(args.planner, session, [result])
    if args.plot:
        print(f"allocation plot -> {plot_allocation(result, args.plot)}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in SEARCHERS]
    if unknown or not methods:
        raise ConfigError(f"--methods {args.methods!r}: choose from {', '.join(SEARCHERS)}")
    if args.out_dir:
        for method in methods:
            check_output_file("out_dir", check_output_dir("out_dir", args.out_dir) / f"{method}.json")
    session = _session(args)
    results = []
    for method in methods:
        out = Path(args.out_dir) / f"{method}.json" if args.out_dir else None
        results.append(search(args.budget, method=method, seed=args.seed, session=session, out=out,
                              workers=args.workers, ray_address=args.ray_address, ray_timeout=args.ray_timeout))
    print(f"\n{','.join(args.budget)} on {session.space.family}, {session.space.granularity} "
          f"({session.space.n_units} units, criterion {session.supernet.criterion}), seed {args.seed}")
    _table(session, results)
    return 0


def _export(args: argparse.Namespace) -> int:
    out = export(args.result, args.out, export_format=args.export_format, model=args.model, progress=not args.quiet)
    if args.export_format in RECIPE_FORMATS:
        print(f"{args.export_format} recipe -> {out}")
        return 0
    layout = json.loads((out / "allocation.json").read_text())["layout"]
    print(f"pruned model -> {out}: {LAYOUTS[layout]}; allocsearch.load_pruned({str(out)!r}) loads every layout "
          "but decilm")
    return 0


def _info(args: argparse.Namespace) -> int:
    session = _session(args)
    space, costs = session.space, session.costs
    dense, const = costs.dense, costs.constant
    print(f"model {session.model_path}: family {space.family}, task {space.task}, {space.granularity}, "
          f"{space.n_units} units, space id {space.id}")
    print(f"dense: {dense['flops']:.4g} FLOPs/token at seq_len {costs.seq_len}, {dense['params']:.4g} params, "
          f"{dense['bytes'] / 1e6:.2f} MB; outside units: {const['flops'] / dense['flops']:.1%} of FLOPs, "
          f"{const['params'] / dense['params']:.1%} of params")
    errors = session.error_table() if args.errors else None
    print(f"{'unit':40}{'groups':>8}{'levels':>8}{'FLOPs share':>13}  removed fractions" +
          ("  | error per level" if errors is not None else ""))
    for u, unit in enumerate(space.units):
        line = (f"{unit.name:40}{unit.groups:>8}{unit.n_levels:>8}{costs.tables['flops'][u, 0] / dense['flops']:>13.1%}  "
                f"{' '.join(f'{f:.3g}' for f in unit.fractions)}")
        if errors is not None:
            line += "  | " + " ".join(f"{e:.3g}" for e in errors[u, : unit.n_levels])
        print(line)
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    _check_port(args.host, args.port)
    url = args.storage or default_storage(args.study)
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        raise ConfigError(f"--study {args.study!r}: no storage at {url}; run search --method optuna --study "
                          f"{args.study} first, or pass --storage")
    storage = open_storage(url)
    names = [s.study_name for s in storage.get_all_studies()]
    if args.study not in names:
        raise ConfigError(f"--study {args.study!r} is not in {url}; it holds {', '.join(names) or 'no study'}")
    print(f"optuna-dashboard for {url} on http://{args.host}:{args.port}/ (Ctrl-C stops it)", flush=True)
    run_server(storage, host=args.host, port=args.port)
    return 0


def _check_port(host: str, port: int) -> None:
    """Refuse a host this machine cannot serve on, or a port another program holds."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(infos[0][4])
    except OSError as exc:
        raise ConfigError(f"port={port} on host={host!r} cannot be served ({exc.strerror or exc}); choose a free "
                          "port, or a host of this machine (127.0.0.1)") from None


def _query(args: argparse.Namespace) -> int:
    plan = Planner.load(args.planner).query(",".join(args.budget))
    if args.json:
        print(json.dumps({"levels": plan.levels.tolist(), "allocation": plan.allocation, "cost": plan.cost,
                          "predicted_error": plan.predicted_error, "measured_fitness": plan.measured_fitness,
                          "source": plan.source}, indent=2))
        return 0
    measured = "not measured" if plan.measured_fitness is None else f"{plan.measured_fitness:.4f}"
    print(f"best known within {','.join(args.budget)} ({plan.source}): predicted error {plan.predicted_error:.4f}, "
          f"measured fitness {measured}")
    print(f"FLOPs ratio {plan.cost['flops_ratio']:.3f}, params ratio {plan.cost['params_ratio']:.3f}, "
          f"memory {plan.cost['bytes'] / 1e6:.2f} MB")
    for name, fraction in plan.allocation.items():
        print(f"  {name:40} {fraction:6.3f}")
    return 0


def _frontier(args: argparse.Namespace) -> int:
    check_image_path("out", args.out)
    planner = Planner.load(args.planner) if args.planner else Planner.from_session(_session(args))
    plot_frontier(planner, args.metric, args.out)
    print(f"frontier -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
