"""The ``grokschedule`` command line: ``demo``, ``sweep``, ``report`` and ``bench``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

# Subcommands with their own argument parser get the rest of the command line untouched.
DELEGATES = {
    "sweep": "grokschedule.app.sweep:sweep_main",
    "report": "grokschedule.tracking.report:report_main",
}
BENCHMARKS = {
    "bank": "grokschedule.bench.bank:bank_main",
    "gpu": "grokschedule.bench.gpu:gpu_bench_main",
    "groups": "grokschedule.bench.groups:groups_main",
    "interventions": "grokschedule.bench.interventions:interventions_bench_main",
    "kicks": "grokschedule.bench.kick_table:kicks_main",
    "live-kicks": "grokschedule.bench.live_kicks:live_kicks_main",
    "lm-kicks": "grokschedule.bench.lm_kicks:lm_kicks_main",
    "load": "grokschedule.bench.load:load_bench_main",
    "probes": "grokschedule.bench.probes:probes_bench_main",
    "predictor": "grokschedule.bench.predictor_fit:predictor_main",
    "replay": "grokschedule.bench.replay_bench:replay_bench_main",
    "soak": "grokschedule.bench.soak:soak_main",
}


def _load(target: str) -> Callable[[list[str]], int]:
    module, function = target.split(":")
    entry: Callable[[list[str]], int] = getattr(importlib.import_module(module), function)
    return entry


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATES:
        return int(_load(DELEGATES[argv[0]])(argv[1:]))
    if len(argv) >= 2 and argv[0] == "bench" and argv[1] in BENCHMARKS:
        return int(_load(BENCHMARKS[argv[1]])(argv[2:]))
    parser = argparse.ArgumentParser(prog="grokschedule", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the local demo sweep (Ray + MLflow on sqlite)")
    demo.add_argument("--root", type=Path, default=Path("grokschedule_runs"))
    demo.add_argument("--quick", action="store_true", help="a few short trials, for a smoke test")
    demo.add_argument(
        "--task",
        choices=("modular", "lm"),
        default="modular",
        help="modular: 12 MLP trials on modular addition; lm: 8 causal-LM trials through the "
        "DeepSpeed trainer, with kicks (needs the [lm] extra)",
    )
    commands.add_parser(
        "sweep",
        help="run a sweep from a YAML spec: sweep SPEC.yaml [--dry-run]; sweep --schema prints "
        "the spec's JSON Schema",
    )
    commands.add_parser("report", help="a sweep's summary from MLflow: report --experiment NAME")
    bench = commands.add_parser("bench", help="benchmarks (results go to BENCHMARKS.md)")
    bench.add_argument("name", choices=sorted(BENCHMARKS), help="then that benchmark's options")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from grokschedule.app.demo import run_demo

        return run_demo(args.root, args.quick, args.task)
    parser.error(f"{args.command} needs arguments; see {args.command} --help")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
