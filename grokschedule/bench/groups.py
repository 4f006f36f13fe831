"""``grokschedule bench groups``: leave-one-group-out replays, judged by their worst group.

A scheduler is only as good as its decisions on runs unlike the ones it was tuned on, so every
group of a bank (one op, one modulus, one width, one learning rate, ...) is replayed on its own,
by a GrokScheduler whose predictor was fitted without that group (``--fold-predictors``, written
by ``grokschedule bench predictor --fold-dir``), next to FIFO+stop-at-grok, ASHA and the median
rule on the same curves. Curves may be read sparsely (``--every 5``: every 5th recorded point,
so the first report comes after memorization), as users who report every few hundred steps do.

Per group and scheduler: recall against FIFO+stop's grokkers, compute against FIFO+stop's, the
**false kills before max_t** (grokkers that reached the threshold by ``max_t`` but were stopped
first: the failure this product must not make), the grokkers found past ``max_t`` (by EXTEND),
and, for GrokScheduler, each false kill's reason. The table ends with the worst group.

``--offline`` replays through ``GrokPolicy`` directly (one policy per group, trials interleaved
``--max-concurrent`` at a time, as Tune runs them), which decides exactly as the scheduler does
(``grokschedule bench soak`` checks that equality) in a fraction of the time: use it to compare
settings, and the Tune replay for the figures that are published.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from grokschedule.bench.bank import CurveBank
from grokschedule.core.contract import Observation
from grokschedule.core.policy import DecisionKind, GrokPolicy, PolicyConfig

METRIC = "val_acc"
BASELINES = ("fifo", "asha", "median")
SCHEDULERS = ("grok", *BASELINES)


@dataclass(frozen=True)
class Group:
    """The rows of one bank that share ``column == value``."""

    column: str
    value: str
    rows: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"{self.column}={self.value}"


def group_label(value: Any) -> str:
    """A grid value as the group names it (``lr=0.001``, ``weight_decay=1``), the way
    ``grokschedule bench predictor --fold-dir`` names its fold predictors."""
    if isinstance(value, float | np.floating):
        return f"{float(value):g}"
    return str(value)


def groups_of(bank: CurveBank, columns: Sequence[str]) -> list[Group]:
    """Every value of every grouping column, in sorted order; a column the bank lacks is an
    error naming the columns it has."""
    out = []
    for column in columns:
        if column not in bank.grid:
            raise ValueError(f"the bank has no column {column!r}; it has {sorted(bank.grid)}")
        values = np.asarray([group_label(v) for v in bank.grid[column]])
        for value in sorted(set(values.tolist())):
            rows = tuple(int(i) for i in np.flatnonzero(values == value))
            out.append(Group(column, value, rows))
    return out


def sparse_curve(bank: CurveBank, row: int, every: int) -> dict[str, np.ndarray]:
    """Row ``row`` as a trial reporting every ``every``-th recorded point reports it (the same
    points ``replay_trainable`` sends with ``config["every"]``)."""
    return {name: values[every - 1 :: every] for name, values in bank.curve(row).items()}


def grok_step(curve: Mapping[str, np.ndarray], threshold: float) -> float | None:
    reached = np.flatnonzero(curve[METRIC] >= threshold)
    return float(curve["step"][reached[0]]) if len(reached) else None


def offline_last_steps(
    config: PolicyConfig, curves: Mapping[int, Mapping[str, np.ndarray]], concurrent: int
) -> tuple[dict[int, float], dict[int, str]]:
    """Each row's last reported step under one ``GrokPolicy`` (the sweep), ``concurrent``
    trials at a time, one result each in turn; and the reason of each trial's last decision."""
    policy = GrokPolicy(config)
    pending = list(curves)
    active: dict[int, int] = {}  # row -> next record
    last: dict[int, float] = {}
    reasons: dict[int, str] = {}
    while pending or active:
        while pending and len(active) < concurrent:
            active[pending.pop(0)] = 0
        for row in list(active):
            curve, k = curves[row], active[row]
            result = {name: float(values[k]) for name, values in curve.items()}
            decision = policy.observe(str(row), Observation.from_result(result))
            last[row] = result["step"]
            reasons[row] = decision.reason
            if decision.kind is DecisionKind.STOP or k + 1 >= len(curve["step"]):
                del active[row]
            else:
                active[row] = k + 1
    return last, reasons


def score(
    curves: Mapping[int, Mapping[str, np.ndarray]],
    last: Mapping[int, float],
    threshold: float,
    max_t: float,
) -> dict[str, Any]:
    """Recall, compute and false kills of one replay of ``curves`` (row -> sparse curve)."""
    horizon = {row: float(curve["step"][-1]) for row, curve in curves.items()}
    grok = {row: grok_step(curve, threshold) for row, curve in curves.items()}
    grokkers = [row for row, at in grok.items() if at is not None]
    found = [row for row in grokkers if last.get(row, 0.0) >= (grok[row] or 0.0)]
    fifo_stop = sum(horizon[row] if at is None else at for row, at in grok.items())
    compute = sum(last.get(row, 0.0) for row in curves)
    return {
        "curves": len(curves),
        "grokkers": len(grokkers),
        "found": len(found),
        "recall": len(found) / len(grokkers) if grokkers else math.nan,
        "compute_vs_fifo_stop": compute / fifo_stop if fifo_stop else math.nan,
        "false_kills": sorted(
            row for row in grokkers if row not in found and (grok[row] or 0) <= max_t
        ),
        "missed_past_max_t": sorted(
            row for row in grokkers if row not in found and (grok[row] or 0) > max_t
        ),
        "found_past_max_t": sorted(row for row in found if (grok[row] or 0) > max_t),
    }


def grok_settings(
    max_t: float, horizon: float, threshold: float, predictor: bool | str, settings: Mapping
) -> dict[str, Any]:
    """GrokScheduler / PolicyConfig arguments of a replay: the replay bench's budgets."""
    return {
        "max_t": max_t,
        "max_extension": horizon - max_t,
        "grok_threshold": threshold,
        "predictor": predictor,
        **settings,
    }


def tune_last_steps(
    scheduler_name: str,
    bank_path: Path,
    group: Group,
    every: int,
    grok_args: Mapping[str, Any],
    concurrent: int,
    storage: Path,
) -> tuple[dict[int, float], dict[int, str]]:
    """The same replay through real Ray Tune (Ray must be up): the last step each row reported,
    and for GrokScheduler the reason of its last decision."""

    from grokschedule.adapters import GrokScheduler
    from grokschedule.bench.replay_bench import make_scheduler, replay_through_tune

    horizon = int(grok_args["max_t"] + grok_args["max_extension"])
    if scheduler_name == "grok":
        scheduler: Any = GrokScheduler(time_attr="step", **grok_args)
        stopper = None
    else:
        scheduler, stopper = make_scheduler(
            scheduler_name, horizon, int(grok_args["max_t"]), grok_args["grok_threshold"]
        )
    ledger, _ = replay_through_tune(
        bank_path,
        group.rows,
        scheduler,
        stopper,
        pausing=scheduler_name == "median",
        concurrent=concurrent,
        storage=storage,
        run_name=f"groups-{scheduler_name}-{group.name}-every{every}",
        every=every,
    )
    last = {row: float(max(steps)) for row, steps in ledger.reported.items()}
    reasons = {}
    if isinstance(scheduler, GrokScheduler):
        for row, trial_id in ledger.trial_ids.items():
            log = scheduler.decision_log(trial_id)
            reasons[row] = log[-1].reason if log else ""
    return last, reasons


def baseline_offline(
    name: str, curves: Mapping[int, Mapping[str, np.ndarray]], threshold: float
) -> dict[int, float]:
    """FIFO+stop offline: every run to its grok step or its end (ASHA and the median rule
    need the other trials' results at equal steps: Tune mode only)."""
    if name != "fifo":
        raise ValueError(f"{name} replays only through Tune (drop --offline)")
    return {
        row: grok_step(curve, threshold) or float(curve["step"][-1])
        for row, curve in curves.items()
    }


def run_groups(
    bank_path: Path,
    columns: Sequence[str],
    everies: Sequence[int],
    schedulers: Sequence[str],
    threshold: float,
    fold_predictors: Path | None,
    predictor: bool | str,
    settings: Mapping[str, Any],
    offline: bool,
    concurrent: int,
    storage: Path,
    only: Sequence[str] = (),
) -> dict[str, Any]:
    """Every (report interval, group, scheduler) replay of one bank, scored; ``only`` keeps
    the groups named there (``op=add``)."""
    bank = CurveBank.load(bank_path)
    groups = groups_of(bank, columns)
    if only:
        unknown = sorted(set(only) - {g.name for g in groups})
        if unknown:
            raise ValueError(f"no groups {unknown}; the bank has {[g.name for g in groups]}")
        groups = [g for g in groups if g.name in only]
    for group in groups:  # every fold predictor is there before any compute is spent
        fold_predictor(fold_predictors, group, predictor)
    rows_out = []
    ray_up = False
    try:
        for every in everies:
            for group in groups:
                curves = {row: sparse_curve(bank, row, every) for row in group.rows}
                steps = next(iter(curves.values()))["step"]
                horizon = float(steps[-1])
                max_t = float(steps[steps <= horizon * 2 / 3][-1])
                grok_args = grok_settings(
                    max_t,
                    horizon,
                    threshold,
                    fold_predictor(fold_predictors, group, predictor),
                    settings,
                )
                for name in schedulers:
                    began = time.perf_counter()
                    reasons: dict[int, str] = {}
                    if offline and name == "grok":
                        config = PolicyConfig(metric=METRIC, mode="max", **grok_args)
                        last, reasons = offline_last_steps(config, curves, concurrent)
                    elif offline:
                        last = baseline_offline(name, curves, threshold)
                    else:
                        if not ray_up:
                            import ray

                            ray.init(
                                address="local",
                                num_cpus=2,
                                include_dashboard=False,
                                log_to_driver=False,
                            )
                            ray_up = True
                        last, reasons = tune_last_steps(
                            name, bank_path, group, every, grok_args, concurrent, storage
                        )
                    row = {"every": every, "group": group.name, "scheduler": name}
                    row |= score(curves, last, threshold, max_t)
                    row["max_t"] = max_t
                    row["wall_s"] = round(time.perf_counter() - began, 1)
                    row["false_kill_reasons"] = {r: reasons.get(r, "") for r in row["false_kills"]}
                    rows_out.append(row)
    finally:
        if ray_up:
            import ray

            ray.shutdown()
    return {
        "bank": str(bank_path),
        "threshold": threshold,
        "settings": dict(settings),
        "offline": offline,
        "rows": rows_out,
        "worst": worst_groups(rows_out),
    }


def fold_predictor(directory: Path | None, group: Group, default: bool | str) -> bool | str:
    """The predictor fitted without ``group`` (``DIR/<column>=<value>.json``), else ``default``."""
    if directory is None:
        return default
    path = directory / f"{group.name}.json"
    if not path.is_file():
        raise ValueError(f"no fold predictor for {group.name}: {path} does not exist")
    return str(path)


def worst_groups(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (report interval, scheduler): the lowest recall, the most false kills and the
    highest compute over the groups, each with the group that has it."""
    out = []
    keys = sorted({(row["every"], row["scheduler"]) for row in rows})
    for every, name in keys:
        mine = [r for r in rows if r["every"] == every and r["scheduler"] == name]
        judged = [r for r in mine if r["grokkers"]]
        low = min(judged, key=lambda r: r["recall"]) if judged else None
        kills = max(mine, key=lambda r: len(r["false_kills"]))
        costly = max(mine, key=lambda r: r["compute_vs_fifo_stop"])
        out.append(
            {
                "every": every,
                "scheduler": name,
                "worst_recall": None if low is None else low["recall"],
                "worst_recall_group": None if low is None else low["group"],
                "most_false_kills": len(kills["false_kills"]),
                "most_false_kills_group": kills["group"],
                "total_false_kills": sum(len(r["false_kills"]) for r in mine),
                "worst_compute": costly["compute_vs_fifo_stop"],
                "worst_compute_group": costly["group"],
                "found_past_max_t": sum(len(r["found_past_max_t"]) for r in mine),
            }
        )
    return out


def render(report: Mapping[str, Any]) -> str:
    """Markdown: one line per (interval, group, scheduler), then the worst group."""
    lines = [
        "| every | group | scheduler | found | recall | compute vs FIFO+stop "
        "| false kills before max_t | found past max_t |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['every']} | {r['group']} | {r['scheduler']} | {r['found']}/{r['grokkers']} "
            f"| {r['recall']:.3f} | {r['compute_vs_fifo_stop']:.3f} | {len(r['false_kills'])} "
            f"| {len(r['found_past_max_t'])} |"
        )
    lines += [
        "",
        "| every | scheduler | worst recall (group) | most false kills (group) | all false kills "
        "| worst compute (group) | found past max_t |",
        "|---|---|---|---|---|---|---|",
    ]
    for w in report["worst"]:
        recall = "–" if w["worst_recall"] is None else f"{w['worst_recall']:.3f}"
        lines.append(
            f"| {w['every']} | {w['scheduler']} | {recall} ({w['worst_recall_group']}) "
            f"| {w['most_false_kills']} ({w['most_false_kills_group']}) "
            f"| {w['total_false_kills']} | {w['worst_compute']:.3f} ({w['worst_compute_group']}) "
            f"| {w['found_past_max_t']} |"
        )
    return "\n".join(lines)


def parse_setting(text: str) -> tuple[str, Any]:
    """``key=value`` with value a number, true/false or none."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--set takes key=value, got {text!r}")
    lowered = raw.lower()
    if lowered in ("none", "null"):
        return key, None
    if lowered in ("true", "false"):
        return key, lowered == "true"
    try:
        return key, float(raw) if any(c in raw for c in ".eE") else int(raw)
    except ValueError:
        return key, raw


def groups_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grokschedule bench groups", description=__doc__)
    parser.add_argument("--bank", type=Path, required=True, help="curve bank .npz")
    parser.add_argument("--group-by", nargs="+", default=["op"], help="grouping columns")
    parser.add_argument("--only", nargs="*", default=[], help="replay only these groups")
    parser.add_argument("--every", type=int, nargs="+", default=[1], help="report intervals")
    parser.add_argument("--schedulers", nargs="+", choices=SCHEDULERS, default=list(SCHEDULERS))
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--fold-predictors", type=Path, help="DIR of <column>=<value>.json")
    parser.add_argument(
        "--predictor", default="true", help="without --fold-predictors: true, false or a path"
    )
    parser.add_argument("--set", nargs="*", default=[], help="GrokScheduler key=value settings")
    parser.add_argument("--offline", action="store_true", help="GrokPolicy directly, no Tune")
    parser.add_argument("--max-concurrent", type=int, default=8)
    parser.add_argument("--storage", type=Path, default=Path("grokschedule_runs/groups"))
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    args = parser.parse_args(argv)
    predictor: bool | str = {"true": True, "false": False}.get(
        args.predictor.lower(), args.predictor
    )
    try:
        settings = dict(parse_setting(s) for s in args.set)
        if any(e < 1 for e in args.every):
            raise ValueError(f"--every must be >= 1, got {args.every}")
        report = run_groups(
            args.bank,
            args.group_by,
            args.every,
            args.schedulers,
            args.threshold,
            args.fold_predictors,
            predictor,
            settings,
            args.offline,
            args.max_concurrent,
            args.storage,
            args.only,
        )
    except ValueError as error:
        parser.error(str(error))
    print(render(report))
    for row in report["rows"]:
        for index, reason in row["false_kill_reasons"].items():
            print(
                f"[{row['every']} {row['group']} {row['scheduler']}] stopped grokker {index}: "
                f"{reason}"
            )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0
