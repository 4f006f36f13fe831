"""``grokschedule bench load``: scheduler decision latency and memory per trial under load.

Drives ``GrokScheduler.on_trial_result`` directly — the call Tune makes for every result — for
many concurrent simulated trials reporting in round-robin order, and reports per-result latency
percentiles and the scheduler's state per trial (its pickled size: what it keeps and what
Tune checkpoints) after each checkpoint of reports, plus the process RSS, so a reader can see
that memory stays flat as runs get longer (ring buffers, bounded logs).
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from ray.tune.experiment import Trial

from grokschedule.adapters import GrokScheduler


def simulated_results(trials: int, seed: int) -> Iterator[list[dict[str, Any]]]:
    """One list of results per round, one result per trial; curves never reach a terminal phase.

    Half the trials memorize (val loss drifting up), half show a slow transition (val loss and
    weight norm falling), both with multiplicative noise, so every signal path is exercised.
    """
    rng = np.random.default_rng(seed)
    drift = np.where(np.arange(trials) % 2 == 0, 2e-4, -2e-4)
    round_index = 0
    while True:
        step = 10 * (round_index + 1)
        noise = rng.lognormal(0.0, 0.02, size=(3, trials))
        val_loss = 5.0 * np.exp(drift * round_index) * noise[0]
        weight_norm = 50.0 * np.exp(drift * round_index / 4) * noise[1]
        yield [
            {
                "step": step,
                "val_acc": 0.01,
                "train_loss": 0.01 * noise[2, i],
                "train_acc": 1.0,
                "val_loss": float(val_loss[i]),
                "weight_norm": float(weight_norm[i]),
                "grok/val_correct_prob": 0.02,
            }
            for i in range(trials)
        ]
        round_index += 1


def run_load(trials: int, reports: int, checkpoints: list[int], seed: int = 0) -> dict[str, Any]:
    scheduler = GrokScheduler(
        metric="val_acc",
        mode="max",
        max_t=1e12,
        min_patience=1e12,
        interventions=True,
    )
    stubs = [Trial("bench", config={}, trial_id=f"t{i:05d}", stub=True) for i in range(trials)]
    latencies = np.empty(trials * reports)
    rows = []
    clock = time.perf_counter_ns
    for round_index, results in enumerate(simulated_results(trials, seed)):
        if round_index == reports:
            break
        for i, (trial, result) in enumerate(zip(stubs, results, strict=True)):
            started = clock()
            scheduler.on_trial_result(None, trial, result)  # type: ignore[arg-type]
            latencies[round_index * trials + i] = clock() - started
        if round_index + 1 in checkpoints:
            done = latencies[: (round_index + 1) * trials] / 1e6
            state_bytes = len(pickle.dumps(scheduler.get_state()))
            rows.append(
                {
                    "reports_per_trial": round_index + 1,
                    "p50_ms": float(np.percentile(done, 50)),
                    "p99_ms": float(np.percentile(done, 99)),
                    "max_ms": float(done.max()),
                    "state_kib_per_trial": state_bytes / trials / 1024,
                    "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return {"trials": trials, "reports": reports, "checkpoints": rows}


def load_bench_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grokschedule bench load", description=__doc__)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--reports", type=int, default=10_000)
    parser.add_argument("--checkpoints", type=int, nargs="*", default=[100, 1000, 10_000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the result as JSON here")
    args = parser.parse_args(argv)
    if args.trials <= 0 or args.reports <= 0:
        parser.error("--trials and --reports must be > 0")
    result = run_load(args.trials, args.reports, args.checkpoints, args.seed)
    print("| reports/trial | p50 ms | p99 ms | max ms | state KiB/trial | max RSS MiB |")
    print("|---:|---:|---:|---:|---:|---:|")
    for row in result["checkpoints"]:
        print(
            f"| {row['reports_per_trial']:,} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | "
            f"{row['max_ms']:.2f} | {row['state_kib_per_trial']:.1f} | {row['max_rss_mib']:.0f} |"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0
