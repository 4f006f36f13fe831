"""The ``grokschedule`` command line."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

# `grokschedule bench NAME ARGS...` hands ARGS to the benchmark's own argument parser.
BENCHMARKS = {
    "bank": "grokschedule.bench.bank:bank_main",
    "load": "grokschedule.bench.load:load_bench_main",
    "replay": "grokschedule.bench.replay_bench:replay_bench_main",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grokschedule", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the local demo sweep (Ray + MLflow on sqlite)")
    demo.add_argument("--root", type=Path, default=Path("grokschedule_runs"))
    demo.add_argument("--quick", action="store_true", help="4 trials instead of 12")
    report = commands.add_parser("report", help="a sweep's summary from MLflow or its journal")
    report.add_argument("args", nargs=argparse.REMAINDER, help="--experiment NAME [...]")
    sweep = commands.add_parser(
        "sweep", help="run a sweep from a YAML spec (locally or on a cluster)"
    )
    sweep.add_argument("args", nargs=argparse.REMAINDER, help="SPEC.yaml [--dry-run] [--address]")
    bench = commands.add_parser("bench", help="benchmarks (results go to BENCHMARKS.md)")
    bench.add_argument("name", choices=sorted(BENCHMARKS))
    bench.add_argument("args", nargs=argparse.REMAINDER, help="options of that benchmark")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "report":
        from grokschedule.tracking.report import report_main

        return report_main(args.args)
    if args.command == "sweep":
        from grokschedule.sweep import sweep_main

        return sweep_main(args.args)
    if args.command == "bench":
        module, function = BENCHMARKS[args.name].split(":")
        return int(getattr(importlib.import_module(module), function)(args.args))
    if args.command == "demo":
        from grokschedule.demo import run_demo

        return run_demo(args.root, args.quick)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
