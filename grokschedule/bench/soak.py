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
(a stall), and the latency of each ``on_trial_result`` call of the scheduler (timed in a subclass
here, ``TimedGrokScheduler``; production code carries no timer).

With interventions on (the default) the policy kicks plateaus and rolls harmful kicks back; each
replay polls the control channel and acknowledges the commands (``replay_trainable``'s
``control``), though its curve cannot respond. Kick choices are sweep-wide (a Thompson draw over
every trial's verdicts, a probe cohort), so a curve alone does not fix them: the offline check is
then a replay of the *sweep*. One fresh ``GrokPolicy`` with the same ``PolicyConfig`` is fed, in
the order the live scheduler saw them, each trial's bank points (from the bank, not from what
Tune delivered), acknowledged through the same ``ReplayAcks`` as the trainable, at the result at
which the live trainable acknowledged the same command (when a poll lands on a busy machine is
timing, not policy; a command the live sweep never made would be acknowledged at the next
result). Every trial's decisions (kind, step, phase and the command of each KICK/ROLLBACK) must
equal the offline ones one for one, the steps it reported must be its curve's from the first
point, none twice, up to its STOP or the curve's end, and every command must be acknowledged at
most once and in order.

``--mlflow-outage-s`` logs the sweep to a real ``mlflow server`` (``GrokMLflowLoggerCallback``,
journal and background sender) and kills the server for that long once ``--mlflow-outage-at``
of the trials have finished; afterwards every journal record must be in MLflow's store exactly
once (``grokschedule.bench.soak_mlflow``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pickle
import re
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import psutil
import ray
from ray import tune
from ray.tune.experiment import Trial

from grokschedule.adapters import GrokCallback, GrokScheduler
from grokschedule.adapters.mlflow_callback import GrokMLflowLoggerCallback
from grokschedule.adapters.ray_compat import object_store_stats
from grokschedule.bench.bank import CONTRACT_NAMES, GRID_COLUMNS, METRICS, CurveBank
from grokschedule.bench.replay_bench import TRIAL_CPU, default_max_t
from grokschedule.bench.replay_trainable import ReplayAcks, replay_trainable
from grokschedule.bench.soak_mlflow import LocalMlflowServer, Outage, verify_delivery
from grokschedule.core.commands import Command
from grokschedule.core.contract import ACKED_ID, APPLIED_STEP, Observation
from grokschedule.core.decision import Decision, DecisionKind
from grokschedule.core.policy import GrokPolicy, PolicyConfig

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController

METRIC = "val_acc"
RSS_EVERY = 25  # trials between RSS samples
RELEASE_TIMEOUT_S = 30.0
MLFLOW_EXPERIMENT = "soak"
CLOSE_TIMEOUT_S = 900.0  # at the end, wait this long for MLflow to take the journal's rest
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


@dataclass(frozen=True)
class Seen:
    """One result as the live scheduler handled it: the trial, its bank row, the step, the
    acknowledgements it carried, and the decision (None: a repeated step, not shown to the
    policy)."""

    trial_id: str
    row: int
    step: float
    acked: tuple[int, int]  # (control/acked_id, control/applied_step)
    decision: tuple[Any, ...] | None


def decision_key(decision: Decision) -> tuple[Any, ...]:
    """What must agree between the live and the offline replay: kind, step, phase, command."""
    command = None if decision.command is None else decision.command.to_dict()
    return (decision.kind.value, int(decision.step), decision.phase.value, command)


class TimedGrokScheduler(GrokScheduler):
    """GrokScheduler with each ``on_trial_result`` call timed and each result and decision
    recorded, in the order Tune handed them over (the bench's instrument: the product's
    scheduler carries no timer)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.latencies_ns: list[int] = []
        self.seen: list[Seen] = []

    def on_trial_result(
        self, tune_controller: TuneController, trial: Trial, result: dict[str, Any]
    ) -> str:
        began = time.perf_counter_ns()
        previous = self._steps.get(trial.trial_id)  # a repeated step never reaches the policy
        action = super().on_trial_result(tune_controller, trial, result)
        self.latencies_ns.append(time.perf_counter_ns() - began)
        step = float(result[self.time_attr])
        repeated = previous is not None and step <= previous
        last = None if repeated else self.last_decision(trial.trial_id)
        acked = (int(result.get(ACKED_ID, -1)), int(result.get(APPLIED_STEP, -1)))
        row = int(trial.config["index"])
        self.seen.append(
            Seen(trial.trial_id, row, step, acked, None if last is None else decision_key(last))
        )
        return action


def offline_sweep(config: PolicyConfig, bank: CurveBank, seen: list[Seen]) -> dict[str, Any]:
    """The sweep replayed offline (module docstring): per trial, the offline decisions and
    acknowledgements, and what was wrong with its live results (steps not its curve's, missing
    or extra, a command acknowledged twice or out of order)."""
    curves = {row: bank.curve(row) for row in {s.row for s in seen}}
    # When the live trainable acknowledged each command: (trial, command id) -> result index.
    acked_at: dict[tuple[str, int], int] = {}
    problems: dict[str, list[str]] = {}
    position: dict[str, int] = {}
    last_ack: dict[str, int] = {}
    for entry in seen:
        if entry.decision is None:
            problems.setdefault(entry.trial_id, []).append(f"step {entry.step:g} repeated")
            continue
        k = position[entry.trial_id] = position.get(entry.trial_id, -1) + 1
        acked, before = entry.acked[0], last_ack.get(entry.trial_id, -1)
        if acked < before:
            problems.setdefault(entry.trial_id, []).append(f"acked id went {before} -> {acked}")
        for command_id in range(before + 1, acked + 1):
            acked_at[entry.trial_id, command_id] = k
        last_ack[entry.trial_id] = max(before, acked)

    policy = GrokPolicy(config)
    acks: dict[str, ReplayAcks] = {}
    due: dict[str, list[tuple[int, Command]]] = {}
    decisions: dict[str, list[tuple[Any, ...]]] = {}
    acknowledged: dict[str, list[tuple[int, int]]] = {}
    index: dict[str, int] = {}
    delays: Counter[int] = Counter()
    for entry in seen:
        if entry.decision is None:
            continue
        trial_id, curve = entry.trial_id, curves[entry.row]
        k = index[trial_id] = index.get(trial_id, -1) + 1
        if k >= len(curve["step"]):
            problems.setdefault(trial_id, []).append(f"result {k + 1} past the curve's end")
            continue
        if entry.step != float(curve["step"][k]):
            problems.setdefault(trial_id, []).append(
                f"result {k + 1} at step {entry.step:g}, the curve's is {curve['step'][k]}"
            )
        state = acks.setdefault(trial_id, ReplayAcks())
        reached = int(curve["step"][k - 1]) if k else -1
        pending = due.setdefault(trial_id, [])
        for at, command in [item for item in pending if item[0] <= k]:
            state.apply(command, reached)
            pending.remove((at, command))
        step = int(curve["step"][k])
        metrics = {name: values[k].item() for name, values in curve.items()}
        decision = policy.observe(trial_id, Observation.from_result(metrics | state.metrics(step)))
        decisions.setdefault(trial_id, []).append(decision_key(decision))
        acknowledged.setdefault(trial_id, []).append(
            (state.state.acked_id, state.state.applied_step)
        )
        if decision.command is not None:
            at = acked_at.get((trial_id, decision.command.id), k + 1)
            due[trial_id].append((at, decision.command))
            if (trial_id, decision.command.id) in acked_at:
                delays[at - k] += 1
    rows = {entry.trial_id: entry.row for entry in seen}
    for trial_id, count in index.items():
        curve = curves[rows[trial_id]]
        stopped = decisions[trial_id][-1][0] == DecisionKind.STOP.value
        if not stopped and count + 1 < len(curve["step"]):
            problems.setdefault(trial_id, []).append(
                f"{len(curve['step']) - count - 1} results lost after step {curve['step'][count]}"
            )
    unacked = sum(len(pending) for pending in due.values())
    return {
        "decisions": decisions,
        "acks": acknowledged,
        "problems": problems,
        "ack_delays": dict(sorted(delays.items())),
        "unacked": unacked,
    }


def compare_sweep(
    seen: list[Seen], offline: Mapping[str, Any], counts: Mapping[str, int]
) -> list[dict[str, Any]]:
    """Trials whose live run differs from the offline replay: decisions, acknowledgements,
    result problems, or a result count the ledger (a Tune callback) disagrees with."""
    live: dict[str, list[tuple[Any, ...]]] = {}
    acks: dict[str, list[tuple[int, int]]] = {}
    rows: dict[str, int] = {}
    handled: Counter[str] = Counter()
    for entry in seen:
        rows[entry.trial_id] = entry.row
        handled[entry.trial_id] += 1
        if entry.decision is not None:
            live.setdefault(entry.trial_id, []).append(entry.decision)
            acks.setdefault(entry.trial_id, []).append(entry.acked)
    mismatches = []
    for trial_id in sorted(set(live) | set(counts) | set(offline["problems"])):
        mine, theirs = live.get(trial_id, []), offline["decisions"].get(trial_id, [])
        problems = list(offline["problems"].get(trial_id, []))
        if mine != theirs:
            first = next(
                (i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b),
                min(len(mine), len(theirs)),
            )
            problems.append(
                f"decision {first + 1} differs: live {mine[first] if first < len(mine) else None}"
                f", offline {theirs[first] if first < len(theirs) else None}"
            )
        if acks.get(trial_id, []) != offline["acks"].get(trial_id, []):
            problems.append("acknowledgements differ from the offline replay's")
        seen_results = handled[trial_id]
        if counts.get(trial_id, 0) != seen_results:
            problems.append(
                f"the ledger saw {counts.get(trial_id, 0)} results, the scheduler {seen_results}"
            )
        if problems:
            mismatches.append(
                {"trial_id": trial_id, "row": rows.get(trial_id), "problems": problems}
            )
    return mismatches


def run_soak(
    bank_path: Path,
    trials: int,
    rows: int,
    horizon: int,
    threshold: float,
    max_concurrent: int,
    storage: Path,
    interventions: bool = True,
    mlflow_outage_s: float | None = None,
    mlflow_outage_at: float = 0.4,
) -> dict[str, Any]:
    """The sweep on a fresh local Ray instance, then the offline comparison and the figures;
    with ``mlflow_outage_s``, logged to a local MLflow server killed that long mid-sweep."""
    source = CurveBank.load(bank_path)
    rows = min(rows, len(source))
    storage.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=storage) as scratch:
        bank_file = Path(scratch) / "soak_bank.npz"
        bank = cut_bank(source, rows, horizon, bank_file)
        end = int(bank.steps[-1])
        max_t = default_max_t(bank.steps)
        scheduler = TimedGrokScheduler(
            metric=METRIC,
            mode="max",
            max_t=max_t,
            max_extension=end - max_t,
            grok_threshold=threshold,
            interventions=True if interventions else None,
        )
        ledger = SoakLedger()
        param_space = {
            "bank": str(bank_file.resolve()),
            "index": tune.grid_search([i % rows for i in range(trials)]),
            "checkpoint_every": 0,
            "control": interventions,
        }
        callbacks: list[tune.Callback] = [GrokCallback(scheduler), ledger]
        server = outage = logger_callback = None
        # Kept after the sweep (``mlflow server --backend-store-uri sqlite:///<it>/mlflow.db``
        # shows the runs), one folder per soak so that no sweep's runs meet another's.
        mlflow_root = storage / "mlflow" / time.strftime("%Y%m%d-%H%M%S")
        if mlflow_outage_s is not None:
            server = LocalMlflowServer(mlflow_root)
            server.start()
            logger_callback = GrokMLflowLoggerCallback(
                scheduler,
                server.uri,
                experiment_name=MLFLOW_EXPERIMENT,
                search_space={"index": f"{rows} bank rows, cycled over {trials} trials"},
                spool_dir=mlflow_root / "spool",
                close_timeout_s=CLOSE_TIMEOUT_S,
            )
            callbacks.append(logger_callback)
        if server is not None and logger_callback is not None and mlflow_outage_s:
            outage = Outage(
                server,
                mlflow_outage_s,
                max(1, int(trials * mlflow_outage_at)),
                lambda: ledger.finished,
                mlflow_root / "spool" / logger_callback.sweep_id,
            )
        context = ray.init(
            address="local", num_cpus=2, include_dashboard=False, log_to_driver=False
        )
        try:
            rss_start = rss_mib()
            tuner = tune.Tuner(
                tune.with_resources(replay_trainable, {"cpu": TRIAL_CPU}),
                param_space=param_space,
                tune_config=tune.TuneConfig(
                    scheduler=scheduler, max_concurrent_trials=max_concurrent, reuse_actors=True
                ),
                run_config=tune.RunConfig(
                    name="soak",
                    storage_path=str(storage.resolve()),
                    callbacks=callbacks,
                    verbose=0,
                ),
            )
            began = time.monotonic()
            if outage is not None:
                outage.start()
            results = tuner.fit()
            wall = time.monotonic() - began
            rss_end = rss_mib()
            plasma_mib, plasma_objects = plasma_usage(context.address_info["gcs_address"])
            release_s, cpu_left_reserved = wait_for_release(RELEASE_TIMEOUT_S)
        finally:
            ray.shutdown()
            if outage is not None:
                outage.cancelled.set()
                outage.join()
            if server is not None:
                server.kill()  # before the store is read: nothing writes to it any more
        mlflow_report = None
        if server is not None and logger_callback is not None:
            if outage is not None and outage.error is not None:
                raise RuntimeError(f"the MLflow outage failed: {outage.error}") from outage.error
            logs = {
                trial_id: [d.to_dict() for d in scheduler.decision_log(trial_id)]
                for trial_id in ledger.rows
            }
            spool = mlflow_root / "spool" / logger_callback.sweep_id
            mlflow_report = {
                "store": str(mlflow_root),
                "outage_s": mlflow_outage_s,
                "outage_at_trials": None if outage is None else outage.at_trials,
                **({} if outage is None else outage.figures),
                **verify_delivery(server, spool, MLFLOW_EXPERIMENT, logs),
            }
            if outage is not None and outage.window is not None:
                mlflow_report["max_gap_during_outage_s"] = round(
                    _max_gap(ledger.times, *outage.window), 2
                )

    assert scheduler.policy is not None  # set once Tune handed it metric and mode
    offline = offline_sweep(scheduler.policy.config, bank, scheduler.seen)
    mismatches = compare_sweep(scheduler.seen, offline, ledger.results)
    if not interventions:  # no sweep-wide state: each curve alone fixes its trial's outcome
        expected = [offline_outcome(scheduler.policy.config, bank.curve(i)) for i in range(rows)]
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
    latencies_ms = np.array(scheduler.latencies_ns or [0]) / 1e6
    samples = ledger.rss
    half = samples[len(samples) // 2 :]
    growth = (
        (half[-1][1] - half[0][1]) / (half[-1][0] - half[0][0]) * 1024 if len(half) > 1 else 0.0
    )
    summary = scheduler.summary()
    state_kib = len(pickle.dumps(scheduler.get_state())) / 1024 / max(1, len(ledger.rows))
    kinds = Counter(s.decision[0] for s in scheduler.seen if s.decision is not None)
    return {
        "bank": str(bank_path),
        "trials": trials,
        "rows": rows,
        "horizon": end,
        "max_t": max_t,
        "threshold": threshold,
        "max_concurrent": max_concurrent,
        "interventions": interventions,
        "trials_seen": len(ledger.rows),
        "errors": sum(result.error is not None for result in results),
        "results": len(ledger.times),
        "repeated": sum(s.decision is None for s in scheduler.seen),
        "mismatches": mismatches,
        "decisions": dict(sorted(kinds.items())),
        "ack_delay_results": offline["ack_delays"],
        "commands_unacked_at_end": offline["unacked"],
        "grokked": len(summary.grokked),
        "stopped": len(summary.stopped),
        "wall_s": round(wall, 1),
        "results_per_s": round(len(ledger.times) / wall, 1),
        "first_result_s": round(first_result, 1),
        # fit() returns after the callbacks' end of experiment (MLflow: plots, flush) too.
        "last_result_s": round((ledger.times[-1] if ledger.times else began) - began, 1),
        "max_gap_s": round(float(gaps.max()), 2),
        "p99_gap_s": round(float(np.percentile(gaps, 99)), 3),
        "on_trial_result_p50_ms": round(float(np.percentile(latencies_ms, 50)), 3),
        "on_trial_result_p99_ms": round(float(np.percentile(latencies_ms, 99)), 3),
        "on_trial_result_max_ms": round(float(latencies_ms.max()), 1),
        "rss_start_mib": round(rss_start, 1),
        "rss_end_mib": round(rss_end, 1),
        "rss_kib_per_trial": round((rss_end - rss_start) * 1024 / max(1, trials), 1),
        "rss_samples": [(n, round(mib, 1)) for n, mib in samples],
        "rss_growth_kib_per_trial_second_half": round(growth, 1),
        "scheduler_state_kib_per_trial": round(state_kib, 2),
        "plasma_mib": plasma_mib,
        "plasma_objects": plasma_objects,
        "release_s": release_s,
        "cpu_left_reserved": cpu_left_reserved,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "mlflow": mlflow_report,
    }


def _max_gap(times: list[float], start: float, stop: float) -> float:
    """The longest gap between consecutive results that overlaps [start, stop]."""
    gaps = [b - a for a, b in itertools.pairwise(times) if b >= start and a <= stop]
    return max(gaps, default=stop - start)


def render(report: Mapping[str, Any]) -> str:
    """The Markdown table of BENCHMARKS.md (and the MLflow outage's, when there was one)."""
    header = (
        "| trials | results | errors | mismatches vs offline | decisions | wall s | results/s "
        "| first result s | max gap s | on_trial_result p50 / p99 / max ms "
        "| driver RSS start → end MiB | RSS KiB/trial | RSS growth KiB/trial (2nd half) "
        "| scheduler state KiB/trial | object store MiB | CPU freed after s | CPU left reserved |"
    )
    r = report
    decisions = ", ".join(f"{kind} {n:,}" for kind, n in r["decisions"].items())
    row = (
        f"| {r['trials_seen']}/{r['trials']} | {r['results']:,} | {r['errors']} "
        f"| {len(r['mismatches'])} | {decisions} | {r['wall_s']} | {r['results_per_s']} "
        f"| {r['first_result_s']} | {r['max_gap_s']} "
        f"| {r['on_trial_result_p50_ms']} / {r['on_trial_result_p99_ms']} "
        f"/ {r['on_trial_result_max_ms']} "
        f"| {r['rss_start_mib']:.0f} → {r['rss_end_mib']:.0f} | {r['rss_kib_per_trial']} "
        f"| {r['rss_growth_kib_per_trial_second_half']} | {r['scheduler_state_kib_per_trial']} "
        f"| {r['plasma_mib']} "
        f"| {r['release_s']} | {r['cpu_left_reserved']:g} |"
    )
    lines = [header, "|" + "---|" * 17, row]
    m = r["mlflow"]
    if m is not None:
        lines += [
            "",
            "| MLflow down s (kill → healthy) | killed after trials | backlog KiB at restart "
            "| caught up after s | max gap between results during outage s | records "
            "| runs (trials) | metric rows | artifacts | decisions.json = decision log "
            "| problems |",
            "|" + "---|" * 11,
            f"| {m.get('down_s')} | {m.get('trials_finished_at_kill')} "
            f"| {m.get('backlog_kib_at_restart')} | {m.get('caught_up_after_s')} "
            f"| {m.get('max_gap_during_outage_s')} | {m['records']:,} "
            f"| {m['runs']} ({m['trial_runs']}) | {m['metric_rows']:,} | {m['artifacts']:,} "
            f"| {m['decision_files']} | {len(m['problems'])} |",
        ]
    return "\n".join(lines)


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
    parser.add_argument(
        "--no-interventions",
        action="store_true",
        help="no kicks: each trial's outcome is then also checked against its curve alone",
    )
    parser.add_argument(
        "--mlflow-outage-s",
        type=float,
        help="log to a local mlflow server and kill it this long mid-sweep (0: no outage)",
    )
    parser.add_argument(
        "--mlflow-outage-at",
        type=float,
        default=0.4,
        help="share of the trials finished when the server is killed",
    )
    parser.add_argument("--storage", type=Path, default=Path("grokschedule_runs/soak"))
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error(f"--trials must be >= 1, got {args.trials}")
    if args.mlflow_outage_s is not None and not 0 <= args.mlflow_outage_s <= 3600:
        parser.error(f"--mlflow-outage-s must be in [0, 3600], got {args.mlflow_outage_s}")
    if not 0 < args.mlflow_outage_at < 1:
        parser.error(f"--mlflow-outage-at must be in (0, 1), got {args.mlflow_outage_at}")
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
            interventions=not args.no_interventions,
            mlflow_outage_s=args.mlflow_outage_s,
            mlflow_outage_at=args.mlflow_outage_at,
        )
    except ValueError as error:
        parser.error(str(error))
    print(render(report))
    for mismatch in report["mismatches"]:
        print(f"mismatch: {mismatch}")
    problems = [] if report["mlflow"] is None else report["mlflow"]["problems"]
    for problem in problems:
        print(f"mlflow: {problem}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if not report["mismatches"] and not report["errors"] and not problems else 1
