"""``grokschedule bench replay``: schedulers compared on the same stored curves, through real Tune.

Each bank row is one trial (``tune.grid_search`` over row indices) that replays its recorded
curve point by point, so every scheduler sees exactly the runs the others saw and the only thing
that differs is who stops what, when. The strong baseline is FIFO with a stopper that ends a trial
once it groks: it finds every grokker and pays for each run up to its grok step (or the horizon).

Budgets, in the bank's ``step`` units (horizon H = the last recorded step):
- GrokScheduler: ``max_t`` (default 2/3 H, on a recorded step) with ``max_extension = H - max_t``,
  so a run mid-transition at ``max_t`` can be EXTENDed and found before the curve ends.
- ASHA and HyperBand: ``max_t = H`` (they cannot extend, so they get the whole curve), reduction
  factor 3; ASHA's grace period is H/8, past the memorization phase of these runs, so its first
  rung compares plateaus, not warm-ups. The median rule uses the same grace period.
- Every baseline also has the stop-at-grok stopper; GrokScheduler stops at grok itself.
HyperBand pauses trials at its milestones, and the median rule pauses a trial it cannot judge yet
while others wait: their trials checkpoint every point so a resumed trial continues exactly where
it paused, instead of replaying (and paying for) its curve again. The others never checkpoint.
Ray's HyperBand sizes its first bracket from max_t alone: with max_t = 4000 steps that is 6,561
trials starting at int(4000 / 3**8) = 0 steps, so a bank of a few dozen rows never fills it, and in
the reported run it stopped no trial early (compute equal to FIFO+stop's).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import (
    AsyncHyperBandScheduler,
    FIFOScheduler,
    HyperBandScheduler,
    MedianStoppingRule,
    TrialScheduler,
)

from grokschedule.adapters import GrokScheduler
from grokschedule.bench.bank import BankGrid, CurveBank, generate_bank
from grokschedule.bench.replay_trainable import replay_trainable

SCHEDULERS = ("fifo", "asha", "median", "hyperband", "grok")
PAUSING = {"median", "hyperband"}  # they PAUSE trials, so those must resume from a checkpoint
METRIC = "val_acc"
TRIAL_CPU = 0.25  # replay is cheap: many trials share a core
# The default bank: both grokkers and never-grokkers (5 of 32 grok by step 4000 at 0.95), about
# 4.5 minutes to generate on two loaded CPU cores (use OMP_NUM_THREADS=1 on a shared machine).
DEFAULT_GRID = BankGrid(
    ps=(23,),
    train_fractions=(0.7, 0.8),
    weight_decays=(0.0, 0.1, 0.3, 1.0),
    lrs=(1e-3, 3e-3),
    seeds=(0, 1),
    embed_dim=32,
    hidden_dim=128,
)
DEFAULT_STEPS, DEFAULT_RECORD_EVERY = 4_000, 50


class StopAtGrok(tune.Stopper):
    """Stop a trial once it reached the threshold: nobody needs a grokked run to keep going."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return bool(result[METRIC] >= self.threshold)

    def stop_all(self) -> bool:
        return False


class ReplayLedger(tune.Callback):
    """The steps each bank row reported, from every result Tune processed (a point reported twice,
    after a resume, is paid twice), and each row's trial id for reading the scheduler's log."""

    def __init__(self) -> None:
        self.reported: dict[int, list[int]] = {}
        self.trial_ids: dict[int, str] = {}

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        index = int(trial.config["index"])
        self.trial_ids[index] = trial.trial_id
        self.reported.setdefault(index, []).append(int(result["step"]))


def default_max_t(steps: np.ndarray) -> int:
    """The last recorded step at or below 2/3 of the horizon: GrokScheduler's default extension
    (max_t / 2) then ends at about the horizon."""
    return int(steps[steps <= steps[-1] * 2 / 3][-1])


def make_scheduler(
    name: str, horizon: int, max_t: int, threshold: float
) -> tuple[TrialScheduler, tune.Stopper | None]:
    """The scheduler ``name`` with the budgets in the module docstring, and its stopper."""
    grace = horizon // 8
    stopper = StopAtGrok(threshold)
    if name == "fifo":
        return FIFOScheduler(), stopper
    if name == "asha":
        return AsyncHyperBandScheduler(
            time_attr="step", max_t=horizon, grace_period=grace, reduction_factor=3
        ), stopper
    if name == "median":
        return MedianStoppingRule(time_attr="step", grace_period=grace), stopper
    if name == "hyperband":
        return HyperBandScheduler(time_attr="step", max_t=horizon, reduction_factor=3), stopper
    if name == "grok":
        scheduler = GrokScheduler(
            time_attr="step", max_t=max_t, max_extension=horizon - max_t, grok_threshold=threshold
        )
        return scheduler, None
    raise ValueError(f"unknown scheduler {name!r}; choose from {SCHEDULERS}")


def score(
    bank: CurveBank, threshold: float, max_t: int, reported: dict[int, list[int]]
) -> dict[str, Any]:
    """Recall, compute and false kills of one replay, against the bank's own grok steps.

    A grokker is found when its trial reported its grok step (reports are in order, so reaching
    that step means reporting it); every grokker not found was stopped early, a false kill.
    Compute counts each reported point as the steps since the previous recorded point.
    """
    horizon = int(bank.steps[-1])
    grok = {i: bank.grok_step(i, threshold) for i in range(len(bank))}
    grokkers = [i for i, at in grok.items() if at is not None]
    width = dict(zip(bank.steps.tolist(), np.diff(bank.steps, prepend=0).tolist(), strict=True))
    fifo_stop = sum(horizon if at is None else at for at in grok.values())
    compute = sum(width[step] for steps in reported.values() for step in steps)
    found = [i for i in grokkers if max(reported.get(i, [0])) >= grok[i]]
    return {
        "curves": len(bank),
        "grokkers": len(grokkers),
        "found": len(found),
        "recall": len(found) / len(grokkers) if grokkers else math.nan,
        "compute_steps": compute,
        "fifo_stop_steps": fifo_stop,
        "compute_vs_fifo_stop": compute / fifo_stop,
        "false_kills": [i for i in grokkers if i not in found],
        "found_past_max_t": [i for i in found if grok[i] > max_t],
    }


def replay_through_tune(
    bank_path: Path,
    rows: Iterable[int],
    scheduler: TrialScheduler,
    stopper: tune.Stopper | None,
    *,
    pausing: bool,
    concurrent: int,
    storage: Path,
    run_name: str,
    every: int = 1,
) -> tuple[ReplayLedger, tune.ResultGrid]:
    """One Tune run replaying ``rows`` of the bank (Ray must be up); the ledger of what each
    row reported, and Tune's results. A pausing scheduler's trials checkpoint every point."""
    ledger = ReplayLedger()
    tuner = tune.Tuner(
        tune.with_resources(replay_trainable, {"cpu": TRIAL_CPU}),
        param_space={
            "bank": str(bank_path.resolve()),
            "index": tune.grid_search(list(rows)),
            "every": every,
            "checkpoint_every": 1 if pausing else 0,
        },
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max",
            scheduler=scheduler,
            max_concurrent_trials=concurrent,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=str(storage.resolve()),
            stop=stopper,
            callbacks=[ledger],
            verbose=0,
        ),
    )
    return ledger, tuner.fit()


def run_scheduler(
    name: str,
    bank_path: Path,
    bank: CurveBank,
    threshold: float,
    max_t: int,
    max_concurrent: int,
    storage: Path,
) -> dict[str, Any]:
    """One Tune run of every bank row under scheduler ``name`` (Ray must be up), scored."""
    horizon = int(bank.steps[-1])
    scheduler, stopper = make_scheduler(name, horizon, max_t, threshold)
    began = time.perf_counter()
    ledger, results = replay_through_tune(
        bank_path,
        range(len(bank)),
        scheduler,
        stopper,
        pausing=name in PAUSING,
        concurrent=max_concurrent,
        storage=storage,
        run_name=f"replay-{name}",
    )
    row = {"scheduler": name} | score(bank, threshold, max_t, ledger.reported)
    row["errors"] = sum(result.error is not None for result in results)
    row["wall_s"] = round(time.perf_counter() - began, 1)
    if isinstance(scheduler, GrokScheduler):  # why each grokker was stopped, in its own words
        row["false_kill_reasons"] = {
            i: scheduler.decision_log(ledger.trial_ids[i])[-1].reason for i in row["false_kills"]
        }
    return row


def render(rows: list[dict[str, Any]], max_t: int) -> str:
    """The Markdown table of BENCHMARKS.md."""
    lines = [
        "| scheduler | grokkers found | recall | compute vs FIFO+stop | false kills "
        f"| found past max_t={max_t} | errors | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['scheduler']} | {row['found']}/{row['grokkers']} | {row['recall']:.2f} "
            f"| {row['compute_vs_fifo_stop']:.2f} | {len(row['false_kills'])} "
            f"| {len(row['found_past_max_t'])} | {row['errors']} | {row['wall_s']} |"
        )
    return "\n".join(lines)


def run_replay(
    bank_path: Path,
    schedulers: list[str],
    threshold: float,
    max_t: int | None,
    max_concurrent: int,
    storage: Path,
) -> dict[str, Any]:
    """Every scheduler over the whole bank on one local Ray instance; the rows and settings."""
    bank = CurveBank.load(bank_path)
    horizon = int(bank.steps[-1])
    max_t = default_max_t(bank.steps) if max_t is None else max_t
    if not 0 < max_t < horizon:
        raise ValueError(f"max_t must be in (0, horizon={horizon}), got {max_t}")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        rows = [
            run_scheduler(name, bank_path, bank, threshold, max_t, max_concurrent, storage)
            for name in schedulers
        ]
    finally:
        ray.shutdown()
    return {
        "bank": str(bank_path),
        "threshold": threshold,
        "horizon": horizon,
        "max_t": max_t,
        "max_extension": horizon - max_t,
        "grace_period": horizon // 8,
        "rows": rows,
    }


def replay_bench_main(argv: list[str] | None = None) -> int:
    """``grokschedule bench replay``: compare schedulers on a curve bank through real Ray Tune."""
    parser = argparse.ArgumentParser(prog="grokschedule bench replay", description=__doc__)
    parser.add_argument(
        "--bank", type=Path, required=True, help="bank .npz (written by --generate)"
    )
    parser.add_argument(
        "--generate",
        action="store_true",
        help=f"first write the default bank ({len(DEFAULT_GRID.rows())} MLPs, p=23, "
        f"{DEFAULT_STEPS} steps) to --bank",
    )
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--max-t", type=int, help="GrokScheduler max_t (default 2/3 of horizon)")
    parser.add_argument("--max-concurrent", type=int, default=int(2 / TRIAL_CPU))
    parser.add_argument("--schedulers", nargs="+", choices=SCHEDULERS, default=list(SCHEDULERS))
    parser.add_argument("--storage", type=Path, default=Path("grokschedule_runs/replay"))
    parser.add_argument("--out", type=Path, help="write the rows and settings as JSON here")
    args = parser.parse_args(argv)
    if args.generate:
        generate_bank(DEFAULT_GRID, DEFAULT_STEPS, DEFAULT_RECORD_EVERY, args.bank, progress=print)
    try:
        report = run_replay(
            args.bank,
            args.schedulers,
            args.threshold,
            args.max_t,
            args.max_concurrent,
            args.storage,
        )
    except ValueError as error:
        parser.error(str(error))
    print(render(report["rows"], report["max_t"]))
    for row in report["rows"]:
        for index, reason in row.get("false_kill_reasons", {}).items():
            print(f"{row['scheduler']} stopped grokker {index}: {reason}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0
