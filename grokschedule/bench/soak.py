"""``grokschedule bench soak``: hundreds of short trials through real Ray Tune with GrokScheduler.

Each trial replays one bank curve (cut at ``--horizon``; row ``i % rows`` for trial ``i``, so a
row is replayed by several trials with different ids) through ``replay_trainable``. Afterwards
every curve is replayed offline through ``GrokPolicy`` directly, with the same ``PolicyConfig``,
and each trial's outcome must match its curve's: the last decision (kind, step, phase) and the
number of results the scheduler saw. A mismatch means the Tune path lost, repeated or reordered a
result, or state leaked between trials.

Besides the outcomes it measures what a long sweep degrades: the driver's RSS sampled as trials
finish (a leak shows as growth per trial after warm-up), the Ray object store's usage at the end,
how long until every CPU is free again after ``fit()`` and what is still held 30 s later (trial
actors not released), and the longest gap between two consecutive results anywhere in the sweep
(a stall).
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import ray
from ray import tune
from ray.tune.experiment import Trial

from grokschedule.adapters import GrokCallback, GrokScheduler
from grokschedule.adapters.ray_compat import object_store_stats
from grokschedule.bench.bank import CONTRACT_NAMES, GRID_COLUMNS, METRICS, CurveBank
from grokschedule.bench.replay_bench import TRIAL_CPU, default_max_t
from grokschedule.bench.replay_trainable import replay_trainable
from grokschedule.core.contract import Observation
from grokschedule.core.decision import DecisionKind
from grokschedule.core.policy import GrokPolicy, PolicyConfig

METRIC = "val_acc"
RSS_EVERY = 25  # trials between RSS samples
RELEASE_TIMEOUT_S = 30.0
_PLASMA = re.compile(r"Plasma memory usage (\d+) MiB, (\d+) objects")


def cut_bank(bank: CurveBank, rows: int, horizon: int, path: Path) -> CurveBank:
    """The first ``rows`` curves of ``bank`` up to step ``horizon``, written to ``path`` in the
    bank layout (``replay_trainable`` reads files)."""
    if not 0 < rows <= len(bank):
        raise ValueError(f"rows must be in [1, {len(bank)}], got {rows}")
    keep = bank.steps <= horizon
    if keep.sum() < 2:
        raise ValueError(f"horizon {horizon} keeps fewer than 2 recorded steps")
    arrays = {"step": bank.steps[keep]}
    arrays |= {f"metric/{name}": bank.metrics[name][:rows, keep] for name in METRICS}
    arrays |= {f"grid/{column}": bank.grid[column][:rows] for column in GRID_COLUMNS}
    np.savez(path, **arrays)
    return CurveBank.load(path)


def bank_from_curves(path: Path, out: Path) -> Path:
    """The recorded curves of a JSON file (tests/data layout) as a bank file, each cut to the
    shortest curve's steps; grid columns hold the curves' own configs where they have them."""
    raw = json.loads(Path(path).read_text())
    curves = [entry["curve"] for entry in raw.values()]
    length = min(len(curve["step"]) for curve in curves)
    arrays: dict[str, np.ndarray] = {"step": np.array(curves[0]["step"][:length])}
    for name in METRICS:
        values = [curve[CONTRACT_NAMES[name]][:length] for curve in curves]
        arrays[f"metric/{name}"] = np.array(values, dtype=np.float32)
    for column in GRID_COLUMNS:
        default = "add" if column == "op" else 0
        arrays[f"grid/{column}"] = np.array(
            [entry["config"].get(column, default) for entry in raw.values()]
        )
    np.savez(out, **arrays)
    return out


def offline_outcome(config: PolicyConfig, curve: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Replay one curve through a fresh ``GrokPolicy`` until it stops or the curve ends."""
    policy = GrokPolicy(config)
    decision = None
    results = 0
    for index in range(len(curve["step"])):
        metrics = {name: values[index].item() for name, values in curve.items()}
        decision = policy.observe("offline", Observation.from_result(metrics))
        results += 1
        if decision.kind is DecisionKind.STOP:
            break
    assert decision is not None  # cut_bank keeps at least two steps
    return _outcome(decision.kind.value, decision.step, decision.phase.value, results)


def _outcome(kind: str, step: float, phase: str, results: int) -> dict[str, Any]:
    return {"kind": kind, "step": int(step), "phase": phase, "results": results}


class SoakLedger(tune.Callback):
    """Per trial: its bank row and result count; per sweep: result times and RSS samples."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        self.results: dict[str, int] = {}
        self.times: list[float] = []
        self.rss: list[tuple[int, float]] = []  # (trials finished, driver RSS MiB)
        self.finished = 0

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        self.times.append(time.monotonic())
        self.rows[trial.trial_id] = int(trial.config["index"])
        self.results[trial.trial_id] = self.results.get(trial.trial_id, 0) + 1

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self.finished += 1
        if self.finished % RSS_EVERY == 0:
            self.rss.append((self.finished, rss_mib()))


def rss_mib() -> float:
    """This (the Tune driver's) process's resident memory."""
    return float(psutil.Process().memory_info().rss) / 2**20


def wait_for_release(timeout_s: float) -> tuple[float, float]:
    """(seconds until every CPU was free again, CPU still held at the end). Ray frees a killed
    actor's resources asynchronously, so right after ``fit()`` a last actor may still hold its
    share; only one that keeps it is a leak."""
    began = time.monotonic()
    while True:
        held = ray.cluster_resources()["CPU"] - ray.available_resources().get("CPU", 0.0)
        waited = time.monotonic() - began
        if held <= 1e-9 or waited > timeout_s:
            return round(waited, 1), held
        time.sleep(0.2)


def plasma_usage(gcs_address: str) -> tuple[int, int]:
    """(MiB, objects) in the Ray object store, from the raylet's own summary."""
    match = _PLASMA.search(object_store_stats(gcs_address))
    if match is None:
        raise RuntimeError("Ray's memory summary has no plasma usage line")
    return int(match.group(1)), int(match.group(2))


def run_soak(
    bank_path: Path,
    trials: int,
    rows: int,
    horizon: int,
    threshold: float,
    max_concurrent: int,
    storage: Path,
) -> dict[str, Any]:
    """The sweep on a fresh local Ray instance, then the offline comparison and the figures."""
    source = CurveBank.load(bank_path)
    rows = min(rows, len(source))
    storage.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=storage) as scratch:
        bank_file = Path(scratch) / "soak_bank.npz"
        bank = cut_bank(source, rows, horizon, bank_file)
        end = int(bank.steps[-1])
        max_t = default_max_t(bank.steps)
        scheduler = GrokScheduler(
            metric=METRIC,
            mode="max",
            max_t=max_t,
            max_extension=end - max_t,
            grok_threshold=threshold,
        )
        ledger = SoakLedger()
        context = ray.init(
            address="local", num_cpus=2, include_dashboard=False, log_to_driver=False
        )
        try:
            rss_start = rss_mib()
            tuner = tune.Tuner(
                tune.with_resources(replay_trainable, {"cpu": TRIAL_CPU}),
                param_space={
                    "bank": str(bank_file.resolve()),
                    "index": tune.grid_search([i % rows for i in range(trials)]),
                    "checkpoint_every": 0,
                },
                tune_config=tune.TuneConfig(
                    scheduler=scheduler, max_concurrent_trials=max_concurrent, reuse_actors=True
                ),
                run_config=tune.RunConfig(
                    name="soak",
                    storage_path=str(storage.resolve()),
                    callbacks=[GrokCallback(scheduler), ledger],
                    verbose=0,
                ),
            )
            began = time.monotonic()
            results = tuner.fit()
            wall = time.monotonic() - began
            rss_end = rss_mib()
            plasma_mib, plasma_objects = plasma_usage(context.address_info["gcs_address"])
            release_s, cpu_left_reserved = wait_for_release(RELEASE_TIMEOUT_S)
        finally:
            ray.shutdown()

    assert scheduler.policy is not None  # set once Tune handed it metric and mode
    expected = [offline_outcome(scheduler.policy.config, bank.curve(i)) for i in range(rows)]
    mismatches = []
    for trial_id, row in sorted(ledger.rows.items()):
        last = scheduler.last_decision(trial_id)
        assert last is not None  # the ledger saw a result, so the scheduler decided on it
        live = _outcome(last.kind.value, last.step, last.phase.value, ledger.results[trial_id])
        if live != expected[row]:
            mismatches.append(
                {"trial_id": trial_id, "row": row, "live": live, "offline": expected[row]}
            )
    # Before the first result Tune starts the trial actors; after it, a long gap is a stall.
    first_result = ledger.times[0] - began if ledger.times else wall
    gaps = np.diff(np.array(ledger.times)) if len(ledger.times) > 1 else np.zeros(1)
    samples = ledger.rss
    half = samples[len(samples) // 2 :]
    growth = (
        (half[-1][1] - half[0][1]) / (half[-1][0] - half[0][0]) * 1024 if len(half) > 1 else 0.0
    )
    summary = scheduler.summary()
    state_kib = len(pickle.dumps(scheduler.get_state())) / 1024 / max(1, len(ledger.rows))
    return {
        "bank": str(bank_path),
        "trials": trials,
        "rows": rows,
        "horizon": end,
        "max_t": max_t,
        "threshold": threshold,
        "max_concurrent": max_concurrent,
        "trials_seen": len(ledger.rows),
        "errors": sum(result.error is not None for result in results),
        "results": len(ledger.times),
        "mismatches": mismatches,
        "grokked": len(summary.grokked),
        "stopped": len(summary.stopped),
        "wall_s": round(wall, 1),
        "results_per_s": round(len(ledger.times) / wall, 1),
        "first_result_s": round(first_result, 1),
        "max_gap_s": round(float(gaps.max()), 2),
        "p99_gap_s": round(float(np.percentile(gaps, 99)), 3),
        "rss_start_mib": round(rss_start, 1),
        "rss_end_mib": round(rss_end, 1),
        "rss_samples": [(n, round(mib, 1)) for n, mib in samples],
        "rss_growth_kib_per_trial_second_half": round(growth, 1),
        "scheduler_state_kib_per_trial": round(state_kib, 2),
        "plasma_mib": plasma_mib,
        "plasma_objects": plasma_objects,
        "release_s": release_s,
        "cpu_left_reserved": cpu_left_reserved,
    }


def render(report: Mapping[str, Any]) -> str:
    """The Markdown table of BENCHMARKS.md."""
    header = (
        "| trials | results | errors | mismatches vs offline | wall s | results/s "
        "| first result s | max gap s | driver RSS start → end MiB "
        "| RSS growth KiB/trial (2nd half) | scheduler state KiB/trial | object store MiB "
        "| CPU freed after s | CPU left reserved |"
    )
    r = report
    row = (
        f"| {r['trials_seen']}/{r['trials']} | {r['results']:,} | {r['errors']} "
        f"| {len(r['mismatches'])} | {r['wall_s']} | {r['results_per_s']} "
        f"| {r['first_result_s']} | {r['max_gap_s']} "
        f"| {r['rss_start_mib']:.0f} → {r['rss_end_mib']:.0f} "
        f"| {r['rss_growth_kib_per_trial_second_half']} | {r['scheduler_state_kib_per_trial']} "
        f"| {r['plasma_mib']} "
        f"| {r['release_s']} | {r['cpu_left_reserved']:g} |"
    )
    return "\n".join([header, "|" + "---|" * 14, row])


def soak_main(argv: list[str] | None = None) -> int:
    """``grokschedule bench soak``: many short replay trials through Tune, checked offline."""
    parser = argparse.ArgumentParser(prog="grokschedule bench soak", description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bank", type=Path, help="bank .npz (bench bank --out)")
    source.add_argument(
        "--curves", type=Path, help="recorded curves JSON (tests/data/recorded_curves.json)"
    )
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--rows", type=int, default=64, help="bank rows to cycle through")
    parser.add_argument("--horizon", type=int, default=2000, help="last step replayed")
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--max-concurrent", type=int, default=int(2 / TRIAL_CPU))
    parser.add_argument("--storage", type=Path, default=Path("grokschedule_runs/soak"))
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error(f"--trials must be >= 1, got {args.trials}")
    if args.curves is not None:
        args.storage.mkdir(parents=True, exist_ok=True)
        args.bank = bank_from_curves(args.curves, args.storage / "curves_bank.npz")
    try:
        report = run_soak(
            args.bank,
            args.trials,
            args.rows,
            args.horizon,
            args.threshold,
            args.max_concurrent,
            args.storage,
        )
    except ValueError as error:
        parser.error(str(error))
    print(render(report))
    for mismatch in report["mismatches"]:
        print(f"mismatch: {mismatch}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if not report["mismatches"] and not report["errors"] else 1
