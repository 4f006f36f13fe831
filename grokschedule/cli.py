"""The ``grokschedule`` command line."""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grokschedule", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the local demo sweep (Ray + MLflow on sqlite)")
    demo.add_argument("--root", type=Path, default=Path("grokschedule_runs"))
    demo.add_argument("--quick", action="store_true", help="4 trials instead of 12")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from grokschedule.demo import run_demo

        return run_demo(args.root, args.quick)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
