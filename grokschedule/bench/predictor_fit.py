"""``grokschedule bench predictor``: fit GrokPredictor on a curve bank and judge it on held-out ops.

Each bank curve is replayed through ``GrokHistory`` exactly as a live trial would be, and
features are taken at ``r`` × the curve's own memorization step for ``r`` in ``SCHEDULE`` (until
the run groks or its curve ends). A sample's label is whether the curve reaches the threshold
within the bank's horizon; the ETA target is ``ln(grok step / step)`` for the grokkers. Each
curve carries weight 1 shared among its samples, so long-plateau curves do not dominate. The
curves are also replayed with the optional metrics masked (no ``grok/*``, no weight norm, no
``val_acc``) at half weight, so the missing-metric flags are fitted.

Evaluation holds out whole tasks: for each op, the model (and its Platt recalibration, from an
inner leave-one-op-out over the remaining ops) is fitted on the other ops and judged on the
held-out op at 2× and 4× each run's memorization step, on runs not yet grokked there; the four
folds' predictions are pooled. Reported: AUROC, Brier score, a reliability table and the median
absolute ETA error on the grokkers, plus the shipped model on the recorded curves of tests/data
(other p, other sizes: an out-of-distribution check).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from grokschedule.bench.bank import CurveBank
from grokschedule.core.contract import VAL_CONFIDENCE, VAL_CORRECT_PROB, ZERO_LOSS_SHARE
from grokschedule.core.fitting import auroc, fit_logistic, fit_ridge
from grokschedule.core.predictor import FEATURES, FLAGS, FORMAT, INPUTS, GrokHistory, GrokPredictor

SCHEDULE = (1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0)
JUDGED_AT = (2.0, 4.0)
# Replays of every curve with metrics masked, and their weight relative to the full replay.
VARIANTS: dict[str, tuple[tuple[str, ...], float]] = {
    "full": ((), 1.0),
    "no grok/*": ((VAL_CORRECT_PROB, VAL_CONFIDENCE, ZERO_LOSS_SHARE), 0.5),
    "no weight_norm": (("weight_norm",), 0.5),
    "no val_acc": (("val_acc",), 0.5),
}
L2, ETA_L2 = 1.0, 1.0
CAPACITY = 32  # rows GrokHistory keeps per trial
# The features the shipped model uses (a subset of predictor.FEATURES, all of them today).
FEATURE_SET: tuple[str, ...] = tuple(FEATURES)
BINS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
RECORDED = Path(__file__).resolve().parents[2] / "tests" / "data" / "recorded_curves.json"


@dataclass
class Samples:
    """Feature rows (NaN = absent), missing flags, and per-row bookkeeping."""

    x: NDArray[np.float64]
    flags: NDArray[np.float64]
    label: NDArray[np.float64]
    step: NDArray[np.float64]
    grok: NDArray[np.float64]  # grok step (NaN for non-grokkers)
    ratio: NDArray[np.float64]  # step / memorization step on the schedule
    curve: NDArray[np.int64]
    group: NDArray[np.str_]  # the op: folds hold out whole groups
    variant: NDArray[np.str_]
    weight: NDArray[np.float64]

    def take(self, mask: NDArray[np.bool_]) -> Samples:
        return Samples(**{k: v[mask] for k, v in self.__dict__.items()})


def grok_step(curve: Mapping[str, Sequence[float]], threshold: float) -> float | None:
    reached = np.flatnonzero(np.asarray(curve["val_acc"], dtype=np.float64) >= threshold)
    return float(curve["step"][int(reached[0])]) if len(reached) else None


def curve_rows(
    curve: Mapping[str, Sequence[float]],
    threshold: float,
    schedule: Sequence[float] = SCHEDULE,
    drop: Sequence[str] = (),
) -> list[tuple[float, float, dict[str, float], tuple[str, ...]]]:
    """Replay one curve; ``(step, ratio, features, missing)`` at each ratio of the schedule
    reached before the curve groks or ends."""
    steps = [float(s) for s in curve["step"]]
    columns = {n: curve[n] for n in INPUTS if n in curve and n not in drop}
    history, out, pending = GrokHistory(CAPACITY), [], list(schedule)
    for i, step in enumerate(steps):
        history.append(step, {n: float(v[i]) for n, v in columns.items()})
        if float(curve["val_acc"][i]) >= threshold:
            break
        m = history.memorized_step
        if m is None:
            continue
        while pending and step >= pending[0] * m:  # the first recorded step at ratio × m
            values, missing = history.features()
            out.append((step, pending.pop(0), values, missing))
    return out


def build_samples(
    curves: Sequence[Mapping[str, Sequence[float]]],
    groups: Sequence[str],
    threshold: float,
    variants: Mapping[str, tuple[tuple[str, ...], float]] = VARIANTS,
) -> Samples:
    names = list(FEATURES)
    rows: dict[str, list[Any]] = {k: [] for k in Samples.__dataclass_fields__}
    for index, curve in enumerate(curves):
        grok = grok_step(curve, threshold)
        for variant, (drop, share) in variants.items():
            found = curve_rows(curve, threshold, drop=drop)
            for step, ratio, values, missing in found:
                rows["x"].append([values[n] for n in names])
                rows["flags"].append([1.0 if f in missing else 0.0 for f in FLAGS])
                rows["label"].append(0.0 if grok is None else 1.0)
                rows["step"].append(step)
                rows["grok"].append(math.nan if grok is None else grok)
                rows["ratio"].append(ratio)
                rows["curve"].append(index)
                rows["group"].append(groups[index])
                rows["variant"].append(variant)
                rows["weight"].append(share / len(found))
    return Samples(
        x=np.array(rows["x"], dtype=np.float64).reshape(-1, len(names)),
        flags=np.array(rows["flags"], dtype=np.float64).reshape(-1, len(FLAGS)),
        label=np.array(rows["label"]),
        step=np.array(rows["step"]),
        grok=np.array(rows["grok"]),
        ratio=np.array(rows["ratio"]),
        curve=np.array(rows["curve"], dtype=np.int64),
        group=np.array(rows["group"], dtype=str),
        variant=np.array(rows["variant"], dtype=str),
        weight=np.array(rows["weight"]),
    )


def _columns(features: Sequence[str]) -> list[int]:
    names = list(FEATURES)
    return [names.index(f) for f in features]


def _design(
    s: Samples, mean: NDArray[np.float64], scale: NDArray[np.float64], features: Sequence[str]
) -> Any:
    z = (s.x[:, _columns(features)] - mean) / scale
    return np.column_stack([np.where(np.isfinite(z), z, 0.0), s.flags])


def fit_params(
    s: Samples,
    threshold: float,
    platt: tuple[float, float] = (1.0, 0.0),
    features: Sequence[str] | None = None,
) -> dict:
    """Standardize, fit the classifier and the ETA regression; the predictor file's dict."""
    features = list(FEATURE_SET if features is None else features)
    x = s.x[:, _columns(features)]
    mean = np.array([np.nanmean(c) if np.isfinite(c).any() else 0.0 for c in x.T])
    scale = np.array([np.nanstd(c) if np.isfinite(c).sum() > 1 else 1.0 for c in x.T])
    scale = np.where(scale > 1e-9, scale, 1.0)
    design = _design(s, mean, scale, features)
    beta = fit_logistic(design, s.label, s.weight, L2)
    pos = s.label > 0.5
    target = np.log(s.grok[pos] / s.step[pos])
    eta = fit_ridge(design[pos], target, s.weight[pos], ETA_L2)
    residual = target - np.column_stack([np.ones(pos.sum()), design[pos]]) @ eta
    n = len(features)
    per_curve = np.bincount(s.curve, minlength=s.curve.max() + 1)
    curves = np.unique(s.curve)
    return {
        "format": FORMAT,
        "features": features,
        "flags": list(FLAGS),
        "mean": mean.round(6).tolist(),
        "scale": scale.round(6).tolist(),
        "classifier": {
            "intercept": round(float(beta[0]), 6),
            "weights": beta[1 : n + 1].round(6).tolist(),
            "flag_weights": beta[n + 1 :].round(6).tolist(),
            "platt": [round(platt[0], 6), round(platt[1], 6)],
            "l2": L2,
        },
        "eta": {
            "target": "ln(grok step / step)",
            "intercept": round(float(eta[0]), 6),
            "weights": eta[1 : n + 1].round(6).tolist(),
            "flag_weights": eta[n + 1 :].round(6).tolist(),
            "residual_sd": round(float(np.std(residual)), 4),
            "l2": ETA_L2,
        },
        "threshold": threshold,
        "prior": round(float(np.mean([s.label[s.curve == c][0] for c in curves])), 4),
        "capacity": CAPACITY,
        "memorized_acc": 0.99,
        "memorized_loss": 0.01,
        "samples": len(s.label),
        "curves": len(curves),
        "max_samples_per_curve": int(per_curve.max()),
    }


def raw_predict(
    params: Mapping[str, Any], s: Samples
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Uncalibrated logits and ETAs (steps) for every sample, as GrokPredictor computes them."""
    design = _design(s, np.asarray(params["mean"]), np.asarray(params["scale"]), params["features"])
    c, e = params["classifier"], params["eta"]
    logit = c["intercept"] + design @ np.r_[c["weights"], c["flag_weights"]]
    log_ratio = e["intercept"] + design @ np.r_[e["weights"], e["flag_weights"]]
    return logit, s.step * np.expm1(np.clip(log_ratio, 0.0, 8.0))


def fit_platt(logit: NDArray[np.float64], label: NDArray[np.float64], weight: Any) -> tuple:
    beta = fit_logistic(logit[:, None], label, weight, 1.0)  # shrinks a runaway slope
    return float(beta[1]), float(beta[0])


def fold_models(s: Samples, threshold: float) -> dict[str, dict[str, Any]]:
    """For each group: the predictor fitted on the other groups, with its Platt recalibration
    fitted on an inner leave-one-group-out over those groups (so no held-out data is used)."""
    models = {}
    for group in np.unique(s.group):
        train = s.take(s.group != group)
        platt = (1.0, 0.0)
        if len(np.unique(train.group)) > 1:
            inner_logit = np.full(len(train.label), np.nan)
            for inner in np.unique(train.group):
                fold = train.group == inner
                params = fit_params(train.take(~fold), threshold)
                inner_logit[fold] = raw_predict(params, train.take(fold))[0]
            platt = fit_platt(inner_logit, train.label, train.weight)
        models[str(group)] = fit_params(train, threshold, platt)
    return models


def out_of_fold(s: Samples, models: Mapping[str, Mapping[str, Any]]) -> tuple[Any, Any, Any]:
    """Each sample's calibrated probability, ETA and raw logit from its held-out group's model."""
    prob, eta, logit = (np.full(len(s.label), np.nan) for _ in range(3))
    for group, params in models.items():
        fold = s.group == group
        raw, eta[fold] = raw_predict(params, s.take(fold))
        a, b = params["classifier"]["platt"]
        logit[fold] = raw
        prob[fold] = 1 / (1 + np.exp(-(a * raw + b)))
    return prob, eta, logit


def policy_replay(
    curves: Sequence[Mapping[str, Sequence[float]]],
    groups: Sequence[str],
    models: Mapping[str, Mapping[str, Any]] | None,
    threshold: float,
    workdir: Path,
    **overrides: Any,
) -> dict[str, Any]:
    """GrokPolicy without Ray over every curve, each judged by the predictor that never saw its
    op (``models`` per group; ``None``: the hand rules alone), with the replay benchmark's
    budgets: ``max_t`` at 2/3 of the horizon, extension to the horizon. Recall, compute against
    FIFO+stop-at-grok, false kills, and where the non-grokkers were stopped."""
    from grokschedule.bench.replay_bench import default_max_t
    from grokschedule.core.contract import Observation
    from grokschedule.core.decision import DecisionKind
    from grokschedule.core.policy import GrokPolicy, PolicyConfig

    paths: dict[str, str] = {}
    for group, params in (models or {}).items():
        paths[group] = str(workdir / f"fold_{group}.json")
        Path(paths[group]).write_text(json.dumps(params))
    used = fifo = 0.0
    found, kills, stops, reasons = 0, [], [], {}
    grokkers = 0
    at_max_t = 0
    for index, (curve, group) in enumerate(zip(curves, groups, strict=True)):
        steps = np.asarray(curve["step"], dtype=np.float64)
        horizon, max_t = float(steps[-1]), float(default_max_t(steps))
        config = PolicyConfig(
            max_t=max_t,
            max_extension=horizon - max_t,
            grok_threshold=threshold,
            predictor=paths.get(group, False),
            **overrides,
        )
        policy = GrokPolicy(config)
        grok = grok_step(curve, threshold)
        last = 0.0
        decision = None
        for i, step in enumerate(curve["step"]):
            row = {name: float(values[i]) for name, values in curve.items()}
            decision = policy.observe(str(index), Observation.from_result(row))
            last = float(step)
            if decision.kind is DecisionKind.STOP:
                break
        used += last
        fifo += horizon if grok is None else grok
        if grok is not None:
            grokkers += 1
            if last >= grok:
                found += 1
            else:
                kills.append(index)
                reasons[index] = decision.reason if decision is not None else ""
        else:
            stops.append(last)
            at_max_t += last >= max_t
    return {
        "max_t": "2/3 of each curve's horizon",
        "curves": len(curves),
        "grokkers": grokkers,
        "found": found,
        "recall": found / grokkers if grokkers else math.nan,
        "compute_vs_fifo_stop": round(used / fifo, 4),
        "false_kills": kills,
        "false_kill_reasons": reasons,
        "non_grokker_stop_median": float(np.median(stops)) if stops else None,
        "non_grokkers_run_to_max_t": at_max_t,
    }


def recommend_stop_below(s: Samples, prob: Any, judge_after: float = 2.0) -> dict[str, Any]:
    """GrokPolicy's default ``stop_below``: half the held-out P(grok) that the grokker at the
    2nd percentile falls to at its lowest (from ``judge_after`` × memorization on, all metrics
    reported), clipped to [0.005, 0.2] — so on held-out ops ~98 % of grokkers never drop below
    it, with a factor-2 margin."""
    mask = (s.variant == "full") & (s.ratio >= judge_after) & (s.label > 0.5)
    lowest = [float(prob[mask & (s.curve == c)].min()) for c in np.unique(s.curve[mask])]
    if not lowest:
        return {"stop_below": 0.05, "basis": "no grokkers in the bank: the fallback 0.05"}
    floor = float(np.percentile(lowest, 2))
    value = float(np.clip(floor / 2, 0.005, 0.2))
    return {
        "stop_below": round(value, 4),
        "basis": f"half of the 2nd percentile ({floor:.4f}) of the lowest held-out-op P(grok) "
        f"of {len(lowest)} grokkers from {judge_after:g}× memorization on, clipped to "
        "[0.005, 0.2]",
    }


def judge(s: Samples, prob: Any, eta: Any, ratio: float, variant: str = "full") -> dict:
    """AUROC, Brier, reliability and ETA error at one schedule ratio."""
    mask = (s.ratio == ratio) & (s.variant == variant)
    y, p, e = s.label[mask], prob[mask], eta[mask]
    table = []
    for lo, hi in itertools.pairwise(BINS):
        inside = (p >= lo) & ((p < hi) if hi < 1 else (p <= hi))
        if inside.any():
            table.append(
                {
                    "bin": f"{lo:.1f}–{hi:.1f}",
                    "n": int(inside.sum()),
                    "mean_p": round(float(p[inside].mean()), 3),
                    "observed": round(float(y[inside].mean()), 3),
                }
            )
    pos = y > 0.5
    truth = s.grok[mask][pos] - s.step[mask][pos]
    errors = np.abs(e[pos] - truth)
    return {
        "ratio": ratio,
        "variant": variant,
        "runs": int(mask.sum()),
        "grokkers": int(pos.sum()),
        "auroc": round(auroc(p, y), 4),
        "brier": round(float(np.mean((p - y) ** 2)), 4),
        "reliability": table,
        "median_abs_eta_error": round(float(np.median(errors)), 1) if pos.any() else None,
        "median_rel_eta_error": round(float(np.median(errors / truth)), 3) if pos.any() else None,
    }


def recorded_check(predictor: GrokPredictor, path: Path = RECORDED) -> list[dict[str, Any]]:
    """The shipped model on tests/data's recorded curves at 2× and 4× memorization."""
    raw = json.loads(path.read_text())
    rows = []
    for name, entry in raw.items():
        curve = entry["curve"]
        grok = grok_step(curve, predictor.threshold)
        row: dict[str, Any] = {"curve": name, "grok_step": grok}
        for ratio, (step, _, _, _) in zip(
            JUDGED_AT, curve_rows(curve, predictor.threshold, JUDGED_AT), strict=False
        ):
            n = curve["step"].index(step) + 1
            prediction = predictor.predict({k: v[:n] for k, v in curve.items()})
            row[f"p@{ratio:g}x"] = prediction.p_grok
            row[f"eta@{ratio:g}x"] = prediction.eta_steps
            row[f"step@{ratio:g}x"] = step
            row["memorized_step"] = prediction.memorized_step
        rows.append(row)
    return rows


def bank_curves(bank: CurveBank) -> tuple[list[dict[str, Any]], list[str]]:
    curves = [{k: v.tolist() for k, v in bank.curve(i).items()} for i in range(len(bank))]
    return curves, [str(op) for op in bank.grid["op"]]


def run(
    bank_path: Path, threshold: float, replay: bool = True, with_recorded: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit on the whole bank, evaluate leave-one-op-out; (predictor params, report).
    ``with_recorded`` adds tests/data's recorded curves to the fit as one more group
    ("recorded"), for a bank too small to stand alone; they then no longer check anything."""
    import tempfile

    bank = CurveBank.load(bank_path)
    curves, groups = bank_curves(bank)
    if with_recorded:
        recorded = json.loads(RECORDED.read_text())
        curves += [entry["curve"] for entry in recorded.values()]
        groups += ["recorded"] * len(recorded)
    samples = build_samples(curves, groups, threshold)
    models = fold_models(samples, threshold)
    prob, eta, logit = out_of_fold(samples, models)
    results = [judge(samples, prob, eta, r, v) for v in ("full", "no grok/*") for r in JUDGED_AT]
    # The shipped calibration: Platt on the pooled leave-one-op-out logits.
    platt = fit_platt(logit, samples.label, samples.weight)
    params = fit_params(samples, threshold, platt)
    params["policy"] = recommend_stop_below(samples, prob)
    horizon = int(bank.steps[-1])
    memorized = [r for r in range(len(curves)) if (samples.curve == r).any()]
    params["trained_on"] = {
        "bank": Path(bank_path).name,
        "curves": len(curves),
        "with_recorded_curves": with_recorded,
        "curves_with_samples": len(memorized),
        "grokkers": int(sum(grok_step(c, threshold) is not None for c in curves)),
        "horizon_steps": horizon,
        "ops": sorted(set(groups)),
        "ps": sorted(
            {int(p) for p in bank.grid["p"]}
            | (
                {int(e["config"]["p"]) for e in json.loads(RECORDED.read_text()).values()}
                if with_recorded
                else set()
            )
        ),
        "fitted": dt.date.today().isoformat(),
    }
    params["evaluation"] = {
        f"{r['variant']} @{r['ratio']:g}x": {
            k: r[k] for k in ("auroc", "brier", "median_abs_eta_error", "runs")
        }
        for r in results
    }
    replays = {}
    if replay:
        with tempfile.TemporaryDirectory() as workdir:
            replays["held-out-op predictor"] = policy_replay(  # with the shipped stop_below
                curves,
                groups,
                models,
                threshold,
                Path(workdir),
                stop_below=params["policy"]["stop_below"],
            )
            replays["hand rules (predictor=False)"] = policy_replay(
                curves, groups, None, threshold, Path(workdir)
            )
    predictor = GrokPredictor(params)
    report = {
        "bank": str(bank_path),
        "threshold": threshold,
        "horizon": horizon,
        "curves": len(bank),
        "grokkers": params["trained_on"]["grokkers"],
        "folds": sorted(set(groups)),
        "per_fold": {
            g: judge(
                samples.take(samples.group == g),
                prob[samples.group == g],
                eta[samples.group == g],
                2.0,
            )
            for g in sorted(set(groups))
        },
        "results": results,
        "recorded": recorded_check(predictor) if RECORDED.exists() else [],
        "recorded_in_fit": with_recorded,
        "policy_replay": replays,
        "coefficients": dict(zip(params["features"], params["classifier"]["weights"], strict=True)),
    }
    return params, report


def render(report: Mapping[str, Any]) -> str:
    lines = [
        "| judged at | metrics | runs (grokkers) | AUROC | Brier | median abs ETA error "
        "| median rel ETA error |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['ratio']:g}× memorization | {r['variant']} | {r['runs']} ({r['grokkers']}) "
            f"| {r['auroc']:.3f} | {r['brier']:.3f} | {r['median_abs_eta_error']:,.0f} steps "
            f"| {r['median_rel_eta_error']:.0%} |"
        )
    lines += ["", "Reliability (held-out ops pooled, all metrics):", ""]
    lines += [
        "| judged at | P(grok) bin | runs | mean P | observed grok rate |",
        "|---|---|---|---|---|",
    ]
    for r in report["results"]:
        if r["variant"] != "full":
            continue
        for b in r["reliability"]:
            lines.append(
                f"| {r['ratio']:g}× | {b['bin']} | {b['n']} | {b['mean_p']:.2f} "
                f"| {b['observed']:.2f} |"
            )
    lines += ["", "Per held-out op at 2× memorization:", ""]
    lines += ["| held-out op | runs (grokkers) | AUROC | Brier |", "|---|---|---|---|"]
    for op, r in report["per_fold"].items():
        lines.append(
            f"| {op} | {r['runs']} ({r['grokkers']}) | {r['auroc']:.3f} | {r['brier']:.3f} |"
        )
    if report["recorded"]:
        seen = " (in the fit: not a check)" if report.get("recorded_in_fit") else ""
        lines += ["", f"Shipped model on tests/data recorded curves (p 47–59){seen}:", ""]
        lines += [
            "| curve | memorized | groks at | P(grok) @2× | P(grok) @4× | ETA @4× (true) |",
            "|---|---|---|---|---|---|",
        ]
        for row in report["recorded"]:
            grok = row["grok_step"]
            eta, step4 = row.get("eta@4x"), row.get("step@4x")
            truth = "" if grok is None or step4 is None else f" ({grok - step4:,.0f})"
            eta_text = "–" if eta is None else f"{eta:,.0f}"
            lines.append(
                f"| {row['curve']} | {row.get('memorized_step') or 0:,.0f} "
                f"| {'never' if grok is None else f'{grok:,.0f}'} "
                f"| {row.get('p@2x', math.nan):.2f} | {row.get('p@4x', math.nan):.2f} "
                f"| {eta_text}{truth} |"
            )
    if report.get("policy_replay"):
        lines += [
            "",
            "GrokPolicy replayed offline (no Ray), each op judged by a model fitted on "
            "the other ops:",
            "",
        ]
        lines += [
            "| policy | grokkers found | recall | compute vs FIFO+stop | false kills "
            "| non-grokkers: median stop step | run to max_t |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, r in report["policy_replay"].items():
            lines.append(
                f"| {name} | {r['found']}/{r['grokkers']} | {r['recall']:.3f} "
                f"| {r['compute_vs_fifo_stop']:.2f} | {len(r['false_kills'])} "
                f"| {r['non_grokker_stop_median']:,.0f} | {r['non_grokkers_run_to_max_t']} |"
            )
    return "\n".join(lines)


def predictor_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grokschedule bench predictor", description=__doc__)
    parser.add_argument("--bank", type=Path, required=True, help="curve bank .npz")
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument(
        "--out",
        type=Path,
        help="write the fitted predictor JSON here "
        "(grokschedule/data/grok_predictor.json to ship it)",
    )
    parser.add_argument("--report", type=Path, help="write the evaluation as JSON here")
    parser.add_argument(
        "--no-replay", action="store_true", help="skip the offline GrokPolicy replay"
    )
    parser.add_argument(
        "--with-recorded",
        action="store_true",
        help="also fit on tests/data/recorded_curves.json (one more held-out group)",
    )
    args = parser.parse_args(argv)
    if not args.bank.exists():
        parser.error(f"no bank at {args.bank}")
    params, report = run(
        args.bank, args.threshold, replay=not args.no_replay, with_recorded=args.with_recorded
    )
    print(render(report))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(params, indent=1) + "\n")
        print(f"wrote {args.out}")
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=1, default=float) + "\n")
    return 0
