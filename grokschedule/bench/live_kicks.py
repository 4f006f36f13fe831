"""``grokschedule bench live-kicks``: do the default kicks shorten grokking on a live sweep through
real Ray Tune, on configs the kick table never saw (issue 16's "new user" runs)?

The same grid of modular configs (the built-in ``modular_trainable``, one CPU per trial, local
Ray) is run twice, each arm a Tune sweep of its own with GrokScheduler, its callbacks and MLflow
(sqlite under the output directory, or off) wired as ``grokschedule sweep`` wires them:

- ``adamw``: no kicks and no never-grok stops (``predictor=False``, a patience longer than the
  budget), so every run goes to the budget unless it groks: plain AdamW's steps to grok are known
  for every run;
- ``kicked``: ``GrokScheduler(interventions=True)`` at its defaults, ``max_t`` = the budget: the
  product as a new user gets it, never-grok stops included. The trainable polls the control
  channel (``control: True``), so kicks and rollbacks arrive live, between steps.

Both stop a run once it groks (the first evaluation with ``val_acc`` ≥ ``--threshold``), and the
trainable's ``max_steps`` is the budget in both, so no run is paid past it. Per run: its config,
steps to grok in each arm (never: not within the budget), the kicks applied (kind, step; whether
the trainer acknowledged them) and rollbacks, and forgetting (train accuracy 0.2 below its best
and not back within 500 steps, the rule of ``bench kicks``). Totals: runs grokked in each arm,
median steps to grok over all runs (never = the budget) and their ratio, the median speed-up over
the runs both arms grok, runs that grok only with kicks, runs lost (AdamW groks, the kicked run
does not) and each arm's wall time. Results go to ``live_kicks.json`` in ``--out-dir`` and a
markdown table on stdout.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import ray
from ray import tune
from ray.tune import Callback
from ray.tune.experiment import Trial

from grokschedule.adapters import GrokCallback, GrokMLflowLoggerCallback, GrokScheduler
from grokschedule.adapters.trainables.modular import modular_trainable
from grokschedule.bench.kick_table import FORGET_DROP, FORGET_WINDOW
from grokschedule.core.contract import ACKED_ID, APPLIED_STEP, NOT_APPLIED_ID
from grokschedule.core.decision import Decision, DecisionKind
from grokschedule.core.summary import applied_kicks, describe_config
from grokschedule.training.modular.trainer import TrainConfig

ARMS = ("adamw", "kicked")
LABEL_KEYS = ("op", "p", "train_fraction", "weight_decay", "seed")  # a run's name in both arms


@dataclass(frozen=True)
class Plan:
    """The grid (every combination of the lists) and the training every run gets."""

    ops: tuple[str, ...] = ("mul",)
    ps: tuple[int, ...] = (61,)
    train_fractions: tuple[float, ...] = (0.35, 0.5)
    weight_decays: tuple[float, ...] = (0.1, 0.3)
    seeds: tuple[int, ...] = (0, 1)
    lr: float = 3e-3
    steps: int = 6_000  # the budget: max_steps of every run and max_t of the scheduler
    eval_every: int = 50
    embed_dim: int = 64  # sweeps/local.yaml's model, what a new user starts from
    hidden_dim: int = 256
    threshold: float = 0.95

    def configs(self) -> list[dict[str, Any]]:
        """Each run's trainable config (without ``control``), checked as ``TrainConfig`` and
        ``ModularTask`` check them, so a bad value fails before Ray starts."""
        if not 0 < self.eval_every <= self.steps:
            raise ValueError(
                f"eval_every must be in (0, steps={self.steps}], got {self.eval_every}"
            )
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        grid = itertools.product(
            self.ops, self.ps, self.train_fractions, self.weight_decays, self.seeds
        )
        configs = []
        for op, p, fraction, wd, seed in grid:
            config = {
                "op": op,
                "p": p,
                "train_fraction": fraction,
                "weight_decay": wd,
                "seed": seed,
                "arch": "mlp",
                "embed_dim": self.embed_dim,
                "hidden_dim": self.hidden_dim,
                "lr": self.lr,
                "max_steps": self.steps,
                "eval_every": self.eval_every,
            }
            TrainConfig.from_mapping(config).task.split()  # checks op, p and the fraction
            configs.append(config)
        labels = [label(c) for c in configs]
        if len(set(labels)) != len(labels):
            raise ValueError(f"the grid names a run twice (repeated values?): {labels}")
        return configs

    def param_space(self, control: bool) -> dict[str, Any]:
        """The Tune search space: a grid over the lists, the rest fixed."""
        fixed = {k: v for k, v in self.configs()[0].items() if k not in LABEL_KEYS}
        grids = {
            "op": list(self.ops),
            "p": list(self.ps),
            "train_fraction": list(self.train_fractions),
            "weight_decay": list(self.weight_decays),
            "seed": list(self.seeds),
        }
        space: dict[str, Any] = {k: tune.grid_search(v) for k, v in grids.items()}
        return {**space, **fixed, "control": control}


def scheduler_arguments(arm: str, plan: Plan) -> dict[str, Any]:
    """GrokScheduler's arguments per arm (metric and mode go to ``TuneConfig``)."""
    common = {"time_attr": "step", "max_t": plan.steps, "grok_threshold": plan.threshold}
    if arm == "adamw":
        # Patience is halved on softmax collapse: twice the budget never runs out before it.
        return {**common, "predictor": False, "min_patience": 2 * plan.steps}
    if arm == "kicked":
        return {**common, "interventions": True}
    raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")


def label(config: Mapping[str, Any]) -> str:
    return describe_config(config, LABEL_KEYS)


@dataclass
class KickRecord:
    kind: str
    step: int  # the evaluation whose decision ordered it
    acknowledged: bool  # the trainer applied it (control/acked_id reached it, not refused)
    applied_step: int | None  # the step the trainer applied it at, when its reports show it
    text: str  # "step 300: ortho_grad for 250 steps (rolled back)"


@dataclass
class RunRecord:
    """One config in one arm."""

    label: str
    arm: str
    trial_id: str
    budget: int
    grok_step: int | None
    last_step: int
    outcome: str  # the scheduler's verdict: "grokked at step 1650", "stopped at step ...: ..."
    kicks: list[KickRecord] = field(default_factory=list)
    rollbacks: int = 0
    forgetting_step: int | None = None
    error: str | None = None
    history: list[tuple[int, float, float]] = field(default_factory=list)  # step, train, val

    @property
    def steps_to_grok(self) -> int:
        return self.budget if self.grok_step is None else self.grok_step


def forgetting_step(history: Sequence[tuple[int, float, float]]) -> int | None:
    """The first evaluation whose train accuracy is ``FORGET_DROP`` below its best so far (once
    that best is ≥ 0.5) and not back near it (``FORGET_DROP / 4``) within ``FORGET_WINDOW`` steps
    or by the end: ``bench kicks``' forgetting rule, with the step it starts at."""
    best = 0.0
    for i, (step, train, _) in enumerate(history):
        best = max(best, train)
        if best >= 0.5 and train < best - FORGET_DROP:
            later = [t for s, t, _ in history[i + 1 :] if s <= step + FORGET_WINDOW]
            if not any(t >= best - FORGET_DROP / 4 for t in later):
                return step
    return None


def kick_records(log: Sequence[Decision], rows: Sequence[Mapping[str, Any]]) -> list[KickRecord]:
    """The KICK decisions of a trial's log, with what its reports (``control/*``) say the
    trainer did with each: acknowledged (and not refused), and at which step when one report
    acknowledges exactly it."""
    acked, applied_at, refused = -1, {}, set()
    for row in rows:
        now = int(row.get(ACKED_ID, -1))
        if now > acked:
            applied_at[now] = int(row[APPLIED_STEP])
            acked = now
        refused.add(int(row.get(NOT_APPLIED_ID, -1)))
    kicks = [d for d in log if d.kind is DecisionKind.KICK and d.command and d.command.kick]
    records = []
    for decision, text in zip(kicks, applied_kicks(log), strict=True):
        assert decision.command is not None and decision.command.kick is not None
        command_id = decision.command.id
        records.append(
            KickRecord(
                kind=decision.command.kick.kind,
                step=int(decision.step),
                acknowledged=command_id <= acked and command_id not in refused,
                applied_step=applied_at.get(command_id),
                text=text,
            )
        )
    return records


class _Progress(Callback):
    """One line per finished trial, so a long sweep shows where it is."""

    def __init__(self, arm: str) -> None:
        self.arm = arm

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        result = trial.last_result or {}
        print(
            f"[{self.arm}] {label(trial.config)}: ended at step {result.get('step', 0):.0f}, "
            f"val_acc {result.get('val_acc', float('nan')):.3f}",
            flush=True,
        )


def _ensure_experiment(tracking_uri: str, name: str, artifact_root: Path) -> None:
    """The MLflow experiment with its artifacts under the output directory, not the cwd."""
    client = mlflow.MlflowClient(tracking_uri)
    if client.get_experiment_by_name(name) is None:
        client.create_experiment(name, artifact_location=artifact_root.resolve().as_uri())


def run_arm(
    arm: str, plan: Plan, out_dir: Path, tracking_uri: str | None
) -> tuple[list[RunRecord], float]:
    """One arm's sweep through Tune on the running Ray cluster; its runs and wall time (s)."""
    scheduler = GrokScheduler(**scheduler_arguments(arm, plan))
    space = plan.param_space(control=arm == "kicked")
    experiment = f"live-kicks-{arm}"
    callbacks: list[Callback] = [GrokCallback(scheduler), _Progress(arm)]
    if tracking_uri is not None:
        _ensure_experiment(tracking_uri, experiment, out_dir / "mlartifacts")
        callbacks.append(
            GrokMLflowLoggerCallback(
                scheduler,
                tracking_uri=tracking_uri,
                experiment_name=experiment,
                search_space=space,
                spool_dir=out_dir / "mlflow_spool" / arm,
            )
        )
    tuner = tune.Tuner(
        tune.with_resources(modular_trainable, {"cpu": 1}),
        param_space=space,
        tune_config=tune.TuneConfig(metric="val_acc", mode="max", scheduler=scheduler),
        run_config=tune.RunConfig(
            name=experiment,
            storage_path=str((out_dir / "ray_results").resolve()),
            callbacks=callbacks,
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=1),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )
    started = time.monotonic()
    results = tuner.fit()
    wall_s = round(time.monotonic() - started, 1)
    by_trial = {r.metrics.get("trial_id"): r for r in results}
    records = []
    for outcome in scheduler.summary().trials:
        result = by_trial.get(outcome.trial_id)
        rows: list[dict[str, Any]] = []
        if result is not None and result.metrics_dataframe is not None:
            rows = result.metrics_dataframe.sort_values("step").to_dict("records")
        history = [
            (int(r["step"]), round(float(r["train_acc"]), 4), round(float(r["val_acc"]), 4))
            for r in rows
        ]
        grok = next((s for s, _, v in history if v >= plan.threshold), None)
        records.append(
            RunRecord(
                label=label(outcome.config),
                arm=arm,
                trial_id=outcome.trial_id,
                budget=plan.steps,
                grok_step=grok,
                last_step=history[-1][0] if history else 0,
                outcome=outcome.verdict.outcome,
                kicks=kick_records(scheduler.decision_log(outcome.trial_id), rows),
                rollbacks=outcome.verdict.rollbacks,
                forgetting_step=forgetting_step(history),
                error=None if result is None or result.error is None else str(result.error),
                history=history,
            )
        )
    return records, wall_s


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def totals(
    runs: Mapping[str, Mapping[str, RunRecord]], wall_s: Mapping[str, float]
) -> dict[str, Any]:
    """``runs[label][arm]``: the sweep's totals (module docstring)."""
    pairs = [(r["adamw"], r["kicked"]) for r in runs.values()]
    both = [
        a.steps_to_grok / k.steps_to_grok
        for a, k in pairs
        if a.grok_step is not None and k.grok_step is not None
    ]
    medians = {arm: statistics.median(r[arm].steps_to_grok for r in runs.values()) for arm in ARMS}
    grokked = {arm: sum(r[arm].grok_step is not None for r in runs.values()) for arm in ARMS}
    return {
        "runs": len(pairs),
        "grokked": grokked,
        "median_steps_to_grok": medians,
        "median_ratio": medians["adamw"] / medians["kicked"],
        "both_grok": len(both),
        "median_speedup_both_grok": _median(both),
        "grok_only_with_kicks": sum(
            a.grok_step is None and k.grok_step is not None for a, k in pairs
        ),
        "runs_lost": [a.label for a, k in pairs if a.grok_step is not None and k.grok_step is None],
        "kicks": sum(len(k.kicks) for _, k in pairs),
        "rollbacks": sum(k.rollbacks for _, k in pairs),
        "forgetting": {
            arm: sum(r[arm].forgetting_step is not None for r in runs.values()) for arm in ARMS
        },
        "wall_s": dict(wall_s),
        "as_many_grokked": grokked["kicked"] >= grokked["adamw"],
    }


def _steps(record: RunRecord) -> str:
    return "never" if record.grok_step is None else f"{record.grok_step:,}"


def _speedup(adamw: RunRecord, kicked: RunRecord) -> str:
    if adamw.grok_step is None and kicked.grok_step is None:
        return "—"
    ratio = adamw.steps_to_grok / kicked.steps_to_grok
    # AdamW's never counts at the budget, so a run only kicks grok is sped up at least this.
    return f"{'≥ ' if adamw.grok_step is None else ''}{ratio:.2f}×"


def _forgetting(record: RunRecord) -> str:
    return "—" if record.forgetting_step is None else f"at {record.forgetting_step:,}"


def table(runs: Mapping[str, Mapping[str, RunRecord]], summary: Mapping[str, Any]) -> str:
    """Per run, then the totals, as markdown."""
    lines = [
        "| run | AdamW steps to grok | kicked steps to grok | speed-up | kicks (kind @ step) "
        "| rollbacks | forgetting AdamW / kicked | kicked run |",
        "|---|---:|---:|---:|---|---:|---|---|",
    ]
    for name, pair in runs.items():
        adamw, kicked = pair["adamw"], pair["kicked"]
        kicks = ", ".join(
            f"{k.kind} @ {k.step:,}" + ("" if k.acknowledged else " (not applied)")
            for k in kicked.kicks
        )
        lines.append(
            f"| {name} | {_steps(adamw)} | {_steps(kicked)} | {_speedup(adamw, kicked)} "
            f"| {kicks or '—'} | {kicked.rollbacks} "
            f"| {_forgetting(adamw)} / {_forgetting(kicked)} | {kicked.error or kicked.outcome} |"
        )
    budget = next(iter(runs.values()))["adamw"].budget
    n, medians, wall = summary["runs"], summary["median_steps_to_grok"], summary["wall_s"]
    both = summary["median_speedup_both_grok"]
    lines += [
        "",
        f"| arm | grokked | median steps to grok (never = {budget:,}) | grok only with kicks "
        "| runs lost | kicks | rollbacks | forgetting | wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| AdamW | {summary['grokked']['adamw']}/{n} | {medians['adamw']:,.0f} | — | — | 0 | 0 "
        f"| {summary['forgetting']['adamw']} | {wall['adamw']:.0f} |",
        f"| kicks (defaults) | {summary['grokked']['kicked']}/{n} | {medians['kicked']:,.0f} "
        f"| {summary['grok_only_with_kicks']} | {len(summary['runs_lost'])} | {summary['kicks']} "
        f"| {summary['rollbacks']} | {summary['forgetting']['kicked']} | {wall['kicked']:.0f} |",
        "",
        f"Median steps to grok, AdamW / kicked: {summary['median_ratio']:.2f}×. Median speed-up "
        f"over the {summary['both_grok']} runs both grok: "
        + ("—" if both is None else f"{both:.2f}×")
        + f". As many runs grokked with kicks as without: {summary['as_many_grokked']}.",
    ]
    return "\n".join(lines)


def live_kicks_main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="grokschedule bench live-kicks", description=__doc__)
    parser.add_argument("--ops", nargs="+", default=list(Plan.ops))
    parser.add_argument("--p", nargs="+", type=int, default=list(Plan.ps))
    parser.add_argument(
        "--train-fractions", nargs="+", type=float, default=list(Plan.train_fractions)
    )
    parser.add_argument("--weight-decays", nargs="+", type=float, default=list(Plan.weight_decays))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(Plan.seeds))
    parser.add_argument("--lr", type=float, default=Plan.lr)
    parser.add_argument("--steps", type=int, default=Plan.steps, help="the budget per run")
    parser.add_argument("--eval-every", type=int, default=Plan.eval_every)
    parser.add_argument("--embed-dim", type=int, default=Plan.embed_dim)
    parser.add_argument("--hidden-dim", type=int, default=Plan.hidden_dim)
    parser.add_argument("--threshold", type=float, default=Plan.threshold)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="for local Ray")
    parser.add_argument("--no-mlflow", action="store_true", help="no MLflow logging")
    parser.add_argument("--out-dir", type=Path, default=Path("live_kicks"))
    args = parser.parse_args(argv)
    plan = Plan(
        tuple(args.ops), tuple(args.p), tuple(args.train_fractions), tuple(args.weight_decays),
        tuple(args.seeds), args.lr, args.steps, args.eval_every, args.embed_dim, args.hidden_dim,
        args.threshold,
    )  # fmt: skip
    try:
        plan.configs()  # every run's config checked before Ray starts
    except ValueError as error:
        parser.error(str(error))
    if args.cpus < 1:
        parser.error(f"--cpus must be >= 1, got {args.cpus}")
    out_dir = args.out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    tracking_uri = None if args.no_mlflow else f"sqlite:///{out_dir / 'mlflow.db'}"
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        arms = {arm: run_arm(arm, plan, out_dir, tracking_uri) for arm in ARMS}
    finally:
        if started_ray:
            ray.shutdown()
    runs: dict[str, dict[str, RunRecord]] = {label(c): {} for c in plan.configs()}
    for arm, (records, _) in arms.items():
        for record in records:
            runs[record.label][arm] = record
    incomplete = [name for name, pair in runs.items() if set(pair) != set(ARMS)]
    if incomplete:
        raise RuntimeError(f"runs missing from an arm (trials that never started?): {incomplete}")
    summary = totals(runs, {arm: wall for arm, (_, wall) in arms.items()})
    command = " ".join(["grokschedule bench live-kicks", *argv])
    document = {
        "command": command,
        "plan": asdict(plan),
        "schedulers": {arm: scheduler_arguments(arm, plan) for arm in ARMS},
        "runs": {name: {arm: asdict(r) for arm, r in pair.items()} for name, pair in runs.items()},
        "totals": summary,
    }
    (out_dir / "live_kicks.json").write_text(json.dumps(document, indent=1))
    print(table(runs, summary))
    print(f"JSON: {out_dir / 'live_kicks.json'}")
    return 0
