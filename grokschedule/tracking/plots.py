"""The pictures a reviewer opens first: one trial's curves with its phases and decisions, and the
whole sweep at a glance.

Matplotlib's object API on the Agg canvas, never ``pyplot``: no global figure state, so plotting
is safe on Tune's driver thread next to anything else the user runs, and needs no display.
Inputs are plain series ``[(step, value), ...]`` and decision dicts, so live sweeps, spools and
MLflow runs all plot the same way.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from matplotlib.artist import Artist
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

Series = Sequence[tuple[float, float]]

PHASE_COLORS = {
    "warmup": "#ececec",
    "memorizing": "#dce9f5",
    "plateau": "#fbeecb",
    "transition": "#dcf0d2",
    "grokked": "#b9e3ad",
    "stalled": "#f6d2d0",
    "diverged": "#eab0ad",
}
CATEGORY_COLORS = {
    "grokked": "#2e9d47",
    "stopped": "#c9433a",
    "failed": "#8e44ad",
    "ended": "#7f8c8d",
    "running": "#2f80c9",
}
DECISION_STYLE = {  # color, marker
    "STOP": ("#c9433a", "X"),
    "EXTEND": ("#e67e22", ">"),
    "KICK": ("#8e44ad", "^"),
    "ROLLBACK": ("#6d4c41", "v"),
}
TRAIN, VAL, NORM = "#2f80c9", "#e8590c", "#16a085"
STAR, STAR_EDGE = "#f1c40f", "#7d6608"


def plotted(key: str) -> bool:
    """The result keys a trial plot draws (kept in memory while the trial runs)."""
    if key == "scheduler/score":
        return True
    return "/" not in key and key.endswith(("acc", "loss", "norm"))


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _xy(series: Series) -> tuple[list[float], list[float]]:
    points = [(s, v) for s, v in series if math.isfinite(v)]
    return [s for s, _ in points], [v for _, v in points]


def phase_spans(
    decisions: Sequence[Mapping[str, Any]], end: float
) -> list[tuple[str, float, float]]:
    """``(phase, start, stop)`` from the decision log (one entry per change of kind or phase).

    A terminal phase starts at the last step; it gets a sliver of width so that it shows.
    """
    spans: list[tuple[str, float, float]] = []
    for decision in decisions:
        phase, step = decision["phase"], float(decision["step"])
        if spans and spans[-1][0] == phase:
            continue
        if spans:
            spans[-1] = (spans[-1][0], spans[-1][1], step)
        spans.append((phase, 0.0 if not spans else step, end))
    if spans and spans[-1][1] >= end:
        phase, start, _ = spans[-1]
        spans[-1] = (phase, start, end * 1.012)
    return spans


def trial_figure(
    history: Mapping[str, Series],
    decisions: Sequence[Mapping[str, Any]],
    *,
    title: str,
    outcome: str,
    metric: str,
    threshold: float,
    max_t: float,
) -> bytes:
    """Accuracy, loss and the scheduler's view of one trial over steps, as a PNG."""
    end = max((s for series in history.values() for s, _ in series), default=max_t)
    figure = Figure(figsize=(10, 7.8), layout="constrained")
    acc_ax, loss_ax, sched_ax = figure.subplots(
        3, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2.2, 1.6]}
    )
    spans = phase_spans(decisions, end)
    show_max_t = max_t < end * 1.02
    for ax in (acc_ax, loss_ax, sched_ax):
        for phase, start, stop in spans:
            ax.axvspan(start, stop, color=PHASE_COLORS.get(phase, "#ffffff"), lw=0, zorder=0)
        if show_max_t:
            ax.axvline(max_t, color="#555555", ls=":", lw=1.2, zorder=1)
        _clean(ax)
        ax.grid(True, color="white", lw=0.8)

    curves: list[Any] = []
    for ax, suffix in ((acc_ax, "acc"), (loss_ax, "loss")):
        for key in sorted((k for k in history if k.endswith(suffix)), key=_train_first):
            train = key.startswith("train")
            (line,) = ax.plot(
                *_xy(history[key]),
                color=TRAIN if train else VAL,
                ls="--" if train else "-",
                lw=2,
                label=key,
                zorder=3,
            )
            curves.append(line)
    acc_ax.axhline(threshold, color=CATEGORY_COLORS["grokked"], lw=1, ls="--", zorder=2)
    acc_ax.text(
        0.005,
        threshold,
        f"grok threshold {threshold:g}",
        transform=acc_ax.get_yaxis_transform(),
        va="top",
        fontsize=8,
        color=CATEGORY_COLORS["grokked"],
    )
    acc_ax.set_ylim(-0.03, 1.1)
    acc_ax.set_ylabel("accuracy")
    _log_scale_losses(loss_ax, history)
    loss_ax.set_ylabel("loss")

    if "scheduler/score" in history:
        (line,) = sched_ax.plot(
            *_xy(history["scheduler/score"]), color="#34495e", lw=2, label="grok score"
        )
        curves.append(line)
    sched_ax.set_ylim(-0.05, 1.05)
    sched_ax.set_ylabel("grok score")
    norm_keys = sorted(k for k in history if k.endswith("norm"))
    if norm_keys:
        norm_ax = sched_ax.twinx()
        (line,) = norm_ax.plot(*_xy(history[norm_keys[0]]), color=NORM, lw=1.5, label=norm_keys[0])
        curves.append(line)
        norm_ax.set_ylabel(norm_keys[0], color=NORM)
        norm_ax.spines["top"].set_visible(False)
    sched_ax.set_xlabel("step")
    sched_ax.set_xlim(0, end * 1.02)
    if show_max_t:
        acc_ax.text(max_t, 1.1, "max_t ", fontsize=8, color="#555555", va="top", ha="right")
    _mark_decisions(acc_ax, sched_ax, decisions, history.get(metric, []))

    handles = [*curves]
    handles += [
        Patch(color=PHASE_COLORS.get(p, "#fff"), label=p)
        for p in dict.fromkeys(phase for phase, _, _ in spans)
    ]
    handles += [
        Line2D([], [], color=DECISION_STYLE[k][0], marker=DECISION_STYLE[k][1], ls="", label=k)
        for k in dict.fromkeys(d["kind"] for d in decisions)
        if k in DECISION_STYLE
    ]
    if handles:  # none for a trial that ended before its first result
        figure.legend(
            handles=handles,
            loc="outside lower center",
            ncol=min(len(handles), 7),
            frameon=False,
            fontsize=8.5,
        )
    figure.suptitle(title, fontsize=11, fontweight="bold", x=0.01, ha="left")
    acc_ax.set_title(outcome, loc="left", fontsize=10.5, color=_outcome_color(outcome), pad=14)
    return _png(figure)


def _log_scale_losses(ax: Any, history: Mapping[str, Series]) -> None:
    """Log scale, with exact zeros (float32 softmax collapse) drawn on the floor and named:
    on a log axis they would silently vanish."""
    losses = {k: history[k] for k in history if k.endswith("loss")}
    positive = [v for series in losses.values() for _, v in series if v > 0 and math.isfinite(v)]
    if not positive:
        return
    ax.set_yscale("log")
    floor = min(positive) / 3
    for key, series in losses.items():
        zeros = [s for s, v in series if v == 0]
        if zeros:
            ax.plot(zeros, [floor] * len(zeros), ls="", marker="|", ms=8, color=TRAIN, zorder=3)
            ax.text(
                zeros[0],
                floor,
                f" {key} = 0 exactly from step {zeros[0]:.0f}",
                va="bottom",
                fontsize=8,
                color=TRAIN,
            )


def _outcome_color(outcome: str) -> str:
    for category, color in CATEGORY_COLORS.items():
        if outcome.startswith(category):
            return color
    return "#333333"


def _train_first(key: str) -> tuple[bool, str]:
    return (not key.startswith("train"), key)


def _clean(ax: Any) -> None:
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _decision_label(decision: Mapping[str, Any]) -> str:
    """A few words for a decision marker: the cause of a STOP, the kind of a kick."""
    if decision["kind"] == "KICK":
        kick = (decision.get("command") or {}).get("kick") or {}
        return f"KICK {kick.get('kind', '')}".strip()
    if decision["kind"] == "STOP":
        return str(decision["reason"]).split(":", 1)[0].split(" at step")[0]
    return str(decision["kind"])


def _mark_decisions(
    acc_ax: Any, sched_ax: Any, decisions: Sequence[Mapping[str, Any]], target: Series
) -> None:
    """Vertical marks for each STOP/EXTEND/KICK/ROLLBACK, and a star where the trial grokked."""
    for decision in decisions:
        style = DECISION_STYLE.get(decision["kind"])
        if style is None:
            continue
        color, marker = style
        step = float(decision["step"])
        for ax in (acc_ax, sched_ax):
            ax.axvline(step, color=color, lw=1.2, alpha=0.8, zorder=2)
        acc_ax.plot(
            [step], [1.045], marker=marker, color=color, ms=9, ls="", zorder=5, clip_on=False
        )
        duration = ((decision.get("command") or {}).get("kick") or {}).get("duration_steps")
        if duration:  # a thin bar under the marker: how long the kick lasts
            acc_ax.fill_between([step, step + duration], 1.0, 1.03, color=color, alpha=0.35, lw=0)
        acc_ax.text(
            step,
            0.9,
            _decision_label(decision) + " ",
            rotation=90,
            va="top",
            ha="right",
            fontsize=8,
            color=color,
            zorder=5,
        )
    grokked = next((d for d in decisions if d["phase"] == "grokked"), None)
    if grokked is not None:
        step = float(grokked["step"])
        value = next((v for s, v in target if s == step), None)
        if value is not None:
            acc_ax.plot([step], [value], marker="*", ms=16, color=STAR, mec=STAR_EDGE, zorder=6)


MAX_LABEL = 64  # characters of a trial's label on the overview's axis


@dataclass(frozen=True)
class OverviewTrial:
    """One bar of the sweep overview; ``name`` labels it (``grokschedule.core.labels``: the
    parameters that tell the trial apart, ``wd=1 frac=0.6``)."""

    name: str
    category: str
    outcome: str
    steps_used: float
    grok_step: float | None = None
    kick_steps: Sequence[float] = ()
    rollback_steps: Sequence[float] = ()
    target: Series = field(default_factory=list)


def sweep_figure(
    trials: Sequence[OverviewTrial],
    *,
    title: str,
    metric: str,
    threshold: float,
    max_t: float,
    max_extension: float,
) -> bytes:
    """Compute used against FIFO-to-max_t, each trial's steps, outcome and grok step, and every
    trial's target curve, as a PNG."""
    order = {"grokked": 0, "running": 1, "ended": 1, "stopped": 2, "failed": 3}
    rows = sorted(trials, key=lambda t: (-order.get(t.category, 4), -t.steps_used))
    bars_height = 0.38 * len(rows) + 0.9
    figure = Figure(figsize=(13, 1.3 + bars_height + 3.4), layout="constrained")
    compute_ax, bars_ax, curves_ax = figure.subplots(
        3, 1, gridspec_kw={"height_ratios": [1.0, bars_height, 3.2]}
    )
    right = max([max_t + max_extension, *(t.steps_used for t in rows)]) * 1.02

    used, fifo = sum(t.steps_used for t in rows), max_t * len(rows)
    compute_ax.barh([1, 0], [fifo, used], color=["#bdc3c7", "#34495e"], height=0.6)
    compute_ax.set_yticks([1, 0], ["FIFO to max_t", "GrokScheduler"], fontsize=9)
    for y, value in ((1, fifo), (0, used)):
        share = f" ({value / fifo:.0%})" if fifo and y == 0 else ""
        compute_ax.text(value, y, f" {value:,.0f} steps{share}", va="center", fontsize=9)
    compute_ax.set_xlim(0, max(used, fifo) * 1.3 or 1)
    compute_ax.set_xticks([])
    compute_ax.set_title("Compute", loc="left", fontsize=10)
    _clean(compute_ax)
    compute_ax.spines["bottom"].set_visible(False)

    band = bars_ax.get_xaxis_transform()
    bars_ax.axvspan(max_t, max_t + max_extension, color="#f2f2f2", zorder=0)
    bars_ax.axvline(max_t, color="#555555", ls=":", lw=1.2)
    bars_ax.text(
        max_t, 0.99, "max_t ", transform=band, fontsize=8, color="#555", ha="right", va="top"
    )
    bars_ax.text(
        max_t + max_extension / 2,
        0.99,
        "extension",
        transform=band,
        fontsize=8,
        color="#888",
        ha="center",
        va="top",
    )
    for y, trial in enumerate(rows):
        color = CATEGORY_COLORS.get(trial.category, "#999999")
        bars_ax.barh(y, trial.steps_used, color=color, alpha=0.85, height=0.62, zorder=2)
        if trial.grok_step is not None:
            bars_ax.plot(trial.grok_step, y, marker="*", ms=15, color=STAR, mec=STAR_EDGE, zorder=4)
        for steps, kind in ((trial.kick_steps, "KICK"), (trial.rollback_steps, "ROLLBACK")):
            color, marker = DECISION_STYLE[kind]
            bars_ax.plot(
                steps,
                [y] * len(steps),
                marker=marker,
                ms=8,
                color=color,
                mec="white",
                ls="",
                zorder=4,
            )
    names = [t.name if len(t.name) <= MAX_LABEL else t.name[: MAX_LABEL - 1] + "…" for t in rows]
    bars_ax.set_yticks(range(len(rows)), names, fontsize=8.5)
    bars_ax.set_ylim(-0.6, len(rows) - 0.4)
    bars_ax.set_xlim(0, right)
    bars_ax.set_xlabel("steps used")
    bars_ax.set_title("Steps and outcome per trial", loc="left", fontsize=10)
    _clean(bars_ax)
    # Outcomes as right-hand tick labels: the layout makes room for them, whatever their length.
    outcomes = bars_ax.twinx()
    outcomes.set_ylim(bars_ax.get_ylim())
    outcomes.set_yticks(range(len(rows)), [t.outcome for t in rows], fontsize=8.5)
    for label, trial in zip(outcomes.get_yticklabels(), rows, strict=True):
        label.set_color(CATEGORY_COLORS.get(trial.category, "#333333"))
    outcomes.tick_params(right=False)
    for side in ("top", "right"):
        outcomes.spines[side].set_visible(False)
    legend: list[Artist] = [
        Patch(color=CATEGORY_COLORS[c], label=c)
        for c in dict.fromkeys(t.category for t in reversed(rows))
        if c in CATEGORY_COLORS
    ]
    legend.append(
        Line2D([], [], marker="*", color=STAR, mec=STAR_EDGE, ms=12, ls="", label="grok step")
    )
    for kind, present in (
        ("KICK", any(t.kick_steps for t in rows)),
        ("ROLLBACK", any(t.rollback_steps for t in rows)),
    ):
        if present:
            color, marker = DECISION_STYLE[kind]
            legend.append(Line2D([], [], marker=marker, color=color, ls="", label=kind.lower()))
    for trial in rows:
        color = CATEGORY_COLORS.get(trial.category, "#999999")
        xs, ys = _xy(trial.target)
        curves_ax.plot(xs, ys, color=color, lw=1.5, alpha=0.8)
        if trial.category == "stopped" and xs:
            curves_ax.plot(xs[-1], ys[-1], marker="X", ms=7, color=color, zorder=4)
        if trial.grok_step is not None and trial.grok_step in xs:
            value = ys[xs.index(trial.grok_step)]
            curves_ax.plot(
                trial.grok_step, value, marker="*", ms=12, color=STAR, mec=STAR_EDGE, zorder=4
            )
    curves_ax.axhline(threshold, color=CATEGORY_COLORS["grokked"], ls="--", lw=1)
    curves_ax.axvline(max_t, color="#555555", ls=":", lw=1.2)
    curves_ax.set_xlim(0, right)
    curves_ax.set_xlabel("step")
    curves_ax.set_ylabel(metric)
    curves_ax.set_title(
        f"{metric} of every trial (threshold {threshold:g}; × = stopped)", loc="left", fontsize=10
    )
    _clean(curves_ax)
    curves_ax.legend(handles=legend, loc="upper left", fontsize=8.5, frameon=False)
    figure.suptitle(title, fontsize=11, fontweight="bold", x=0.01, ha="left")
    return _png(figure)
