"""``grokschedule report``: a sweep's account read back from MLflow (or its local spool).

Which trials grokked and when, which were stopped and why, what each kick did, and the compute
used against running every trial to ``max_t``, as text for the console, or Markdown / HTML to
share (the HTML embeds the plots). Trials are named by the parameters that tell them apart
(``wd=1 frac=0.6``, ``grokschedule.core.labels``). The same renderer writes ``summary.md`` /
``summary.html`` on the sweep's parent run at the end of a sweep.
"""

from __future__ import annotations

import argparse
import base64
import html
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from grokschedule.core.labels import short_labels
from grokschedule.tracking import names
from grokschedule.tracking.plots import OverviewTrial, sweep_figure
from grokschedule.tracking.sender import Sender, configure_mlflow_client, why
from grokschedule.tracking.spool import Spool, read_records
from grokschedule.tracking.timeline import (
    TIMELINE_COLUMNS,
    KickEffect,
    describe_totals,
    html_page,
    html_table,
    kick_effects,
    markdown_table,
    sweep_totals,
    timeline_rows,
)
from grokschedule.tracking.views import SweepView, find_spool, mlflow_view, spool_view

FORMATS = ("text", "markdown", "html")


@dataclass
class TrialReport:
    key: str
    name: str  # the MLflow run name
    label: str  # what tells this trial from the sweep's others: ``wd=1 frac=0.6``
    category: str
    outcome: str
    verdict: str
    phase: str
    steps_used: float
    grok_step: float | None
    tags: dict[str, str]
    decisions: list[dict[str, Any]] = field(default_factory=list)
    curves: bytes | None = None

    @property
    def kicks(self) -> list[KickEffect]:
        return kick_effects(self.decisions)


@dataclass
class SweepReport:
    experiment: str
    sweep_id: str
    name: str
    source: str
    settings: dict[str, str]
    search_space: dict[str, str]
    trials: list[TrialReport]
    overview: bytes | None = None
    url: str | None = None  # the sweep run in MLflow's UI

    @property
    def metric(self) -> str:
        return self.settings.get("metric", "target")

    @property
    def threshold(self) -> float:
        return float(self.settings.get("grok_threshold", "nan"))

    @property
    def max_t(self) -> float:
        return float(self.settings.get("max_t", "nan"))

    @property
    def max_extension(self) -> float:
        return float(self.settings.get("max_extension", "0"))

    @property
    def totals(self) -> dict[str, float]:
        return sweep_totals([t.tags for t in self.trials], self.max_t)

    @classmethod
    def from_view(cls, view: SweepView, details: bool = False) -> SweepReport:
        """``details`` also loads every decision log and plot (Markdown/HTML); otherwise only
        the decision logs of kicked trials are fetched."""
        params = view.parent.params
        settings = _strip(params, names.SETTING_PREFIX)
        labels = short_labels({run.key: run.params for run in view.trials})
        trials = []
        for run in view.trials:
            tags = run.tags
            category = tags.get(names.CATEGORY, "running")
            phase = tags.get(names.FINAL_PHASE, tags.get(names.PHASE, "warmup"))
            if category == "running":
                step = run.metrics.get(settings.get("time_attr", "step"), math.nan)
                outcome = f"running, at step {step:.0f} in {phase}"
            else:
                outcome = tags[names.OUTCOME]
            trial = TrialReport(
                key=run.key,
                name=run.name,
                label=labels[run.key],
                category=category,
                outcome=outcome,
                verdict=tags.get(names.VERDICT, tags.get(names.LAST_DECISION, "")),
                phase=phase,
                steps_used=float(tags.get(names.STEPS_USED, 0)),
                grok_step=float(tags[names.GROK_STEP]) if names.GROK_STEP in tags else None,
                tags=dict(tags),
            )
            if details or int(tags.get(names.KICKS, 0)):
                trial.decisions = run.decisions()
            if details:
                trial.curves = run.artifact(names.CURVES_PNG)
            trials.append(trial)
        return cls(
            experiment=view.experiment,
            sweep_id=view.sweep_id,
            name=view.parent.name,
            source=view.source,
            url=view.url,
            settings=settings,
            search_space=_strip(params, names.SPACE_PREFIX),
            trials=trials,
            overview=view.parent.artifact(names.OVERVIEW_PNG) if details else None,
        )


def _strip(params: dict[str, str], prefix: str) -> dict[str, str]:
    return {k.removeprefix(prefix): v for k, v in sorted(params.items()) if k.startswith(prefix)}


def overview_png(report: SweepReport, view: SweepView) -> bytes:
    """The sweep overview plot (see ``plots.sweep_figure``) for a report and its view."""
    by_key = {run.key: run for run in view.trials}
    rows = [
        OverviewTrial(
            name=t.label,
            category=t.category,
            outcome=t.outcome,
            steps_used=t.steps_used,
            grok_step=t.grok_step,
            kick_steps=[d["step"] for d in t.decisions if d["kind"] == "KICK"],
            rollback_steps=[d["step"] for d in t.decisions if d["kind"] == "ROLLBACK"],
            target=by_key[t.key].history(report.metric),
        )
        for t in report.trials
    ]
    return sweep_figure(
        rows,
        title=f"{report.name}\n{describe_totals(report.totals)}",
        metric=report.metric,
        threshold=report.threshold,
        max_t=report.max_t,
        max_extension=report.max_extension,
    )


# -- rendering ------------------------------------------------------------------------------------
def render(report: SweepReport, fmt: str) -> str:
    if fmt == "text":
        return _text(report)
    if fmt == "markdown":
        return _markdown(report)
    if fmt == "html":
        return _html(report)
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def _groups(report: SweepReport) -> list[tuple[str, list[TrialReport]]]:
    order = ("grokked", "stopped", "failed", "ended", "running")
    titles = {
        "grokked": "Grokked",
        "stopped": "Stopped",
        "failed": "Failed",
        "ended": "Ended without a verdict",
        "running": "Still running",
    }
    groups = []
    for category in order:
        trials = sorted(
            (t for t in report.trials if t.category == category),
            key=lambda t: (t.grok_step or t.steps_used, t.label),
        )
        if trials:
            groups.append((f"{titles[category]} ({len(trials)})", trials))
    return groups


def _settings_line(report: SweepReport) -> str:
    keys = (
        "metric",
        "mode",
        "grok_threshold",
        "max_t",
        "max_extension",
        "patience_factor",
        "min_patience",
        "time_attr",
    )
    return ", ".join(f"{k}={report.settings[k]}" for k in keys if k in report.settings)


def _kick_rows(report: SweepReport) -> list[tuple[str, str, str, str]]:
    return [(t.label, f"{k.step:.0f}", k.kick, k.effect) for t in report.trials for k in t.kicks]


def _text(report: SweepReport) -> str:
    lines = [
        f"Sweep {report.name} (experiment {report.experiment}, sweep {report.sweep_id})",
        f"  read from {report.source}" + (f"; open {report.url}" if report.url else ""),
        f"Scheduler: {_settings_line(report)}",
    ]
    if report.search_space:
        lines.append(
            "Search space: " + ", ".join(f"{k}={v}" for k, v in report.search_space.items())
        )
    lines.append(describe_totals(report.totals) + ".")
    for title, trials in _groups(report):
        lines.append(f"{title}:")
        for t in trials:
            lines.append(f"  {t.label}: {t.outcome}")
            if t.category in ("stopped", "failed") and t.verdict:
                lines.append(f"      {t.verdict}")
    kicks = _kick_rows(report)
    if kicks:
        lines.append("Kicks:")
        lines += [
            f"  {name} at step {step}: {kick} -> {effect}" for name, step, kick, effect in kicks
        ]
    return "\n".join(lines) + "\n"


TRIAL_COLUMNS = ("trial", "outcome", "steps", "grok step", "kicks", "rollbacks", "verdict")


def _trial_rows(report: SweepReport) -> list[tuple[str, ...]]:
    return [
        (
            t.label,
            t.outcome,
            f"{t.steps_used:.0f}",
            "" if t.grok_step is None else f"{t.grok_step:.0f}",
            t.tags.get(names.KICKS, "0"),
            t.tags.get(names.ROLLBACKS, "0"),
            t.verdict,
        )
        for _, trials in _groups(report)
        for t in trials
    ]


def _markdown(report: SweepReport) -> str:
    parts = [
        f"# Sweep {report.name}",
        "",
        f"Experiment `{report.experiment}`, sweep `{report.sweep_id}`, read from {report.source}"
        + (f" ([open in MLflow]({report.url}))." if report.url else "."),
        "",
        f"**{describe_totals(report.totals)}.**",
        "",
        "## Scheduler",
        "",
        markdown_table(("setting", "value"), list(report.settings.items())),
    ]
    if report.search_space:
        parts += ["", "## Search space", ""]
        parts.append(markdown_table(("param", "space"), list(report.search_space.items())))
    parts += ["", "## Trials", "", markdown_table(TRIAL_COLUMNS, _trial_rows(report))]
    kicks = _kick_rows(report)
    if kicks:
        parts += ["", "## Kicks", "", markdown_table(("trial", "step", "kick", "effect"), kicks)]
    for _, trials in _groups(report):
        for t in trials:
            parts += ["", f"### {t.label}", "", f"Run `{t.name}`: {t.outcome}", ""]
            parts.append(markdown_table(TIMELINE_COLUMNS, timeline_rows(t.decisions)))
    return "\n".join(parts) + "\n"


def _img(data: bytes | None, alt: str) -> str:
    if data is None:
        return ""
    encoded = base64.b64encode(data).decode()
    return f"<p><img alt='{html.escape(alt)}' src='data:image/png;base64,{encoded}'></p>"


def _html(report: SweepReport) -> str:
    body = [
        f"<h1>Sweep {html.escape(report.name)}</h1>",
        f"<p>Experiment <code>{html.escape(report.experiment)}</code>, sweep "
        f"<code>{html.escape(report.sweep_id)}</code>, read from {html.escape(report.source)}"
        + (f" (<a href='{html.escape(report.url)}'>open in MLflow</a>)." if report.url else ".")
        + "</p>",
        f"<p><b>{html.escape(describe_totals(report.totals))}.</b></p>",
        _img(report.overview, "sweep overview"),
        "<h2>Scheduler</h2>",
        html_table(("setting", "value"), list(report.settings.items())),
    ]
    if report.search_space:
        body += ["<h2>Search space</h2>"]
        body.append(html_table(("param", "space"), list(report.search_space.items())))
    body += ["<h2>Trials</h2>", html_table(TRIAL_COLUMNS, _trial_rows(report))]
    kicks = _kick_rows(report)
    if kicks:
        body += ["<h2>Kicks</h2>", html_table(("trial", "step", "kick", "effect"), kicks)]
    for _, trials in _groups(report):
        for t in trials:
            body.append(f"<h3>{html.escape(t.label)}</h3>")
            body.append(
                f"<p class='{t.category}'>Run <code>{html.escape(t.name)}</code>: "
                f"<b>{html.escape(t.outcome)}</b></p>"
            )
            body.append(_img(t.curves, f"curves of {t.label}"))
            body.append(html_table(TIMELINE_COLUMNS, timeline_rows(t.decisions)))
    return html_page(f"Sweep {report.name}", "\n".join(body))


# -- command line ---------------------------------------------------------------------------------
def sync(spool_dir: Path, tracking_uri: str | None = None) -> bool:
    """Send what a sweep's journal still holds to MLflow (after a sweep ended while MLflow was
    away); True if everything is now delivered."""
    header = next(read_records(spool_dir), None)
    if header is None:
        raise FileNotFoundError(f"no journal in {spool_dir}")
    spool = Spool(spool_dir)
    try:
        return Sender(spool, tracking_uri or header["tracking_uri"], header["experiment"]).drain()
    finally:
        spool.close()


def report_main(argv: list[str] | None = None) -> int:
    """``grokschedule report``: print a sweep's summary and optionally export it."""
    parser = argparse.ArgumentParser(prog="grokschedule report", description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", help="MLflow experiment name (required unless --spool)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    parser.add_argument("--spool", type=Path, help="read a sweep's local spool instead of MLflow")
    parser.add_argument("--sweep", help="sweep id, parent run id or name (default: the latest)")
    parser.add_argument("--format", choices=FORMATS, default="text")
    parser.add_argument("--out", type=Path, help="write the report here (and print the text)")
    parser.add_argument(
        "--sync", action="store_true", help="with --spool: first send what MLflow has not got"
    )
    args = parser.parse_args(argv)
    configure_mlflow_client()  # an unreachable server fails in seconds
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one per download
    if args.spool is None and args.experiment is None:
        parser.error("give --experiment (MLflow) or --spool (local journal)")
    details = args.format != "text"
    uri = args.tracking_uri or mlflow.get_tracking_uri()
    try:
        if args.spool is not None:
            directory = find_spool(args.spool, args.experiment, args.sweep)
            if args.sync and not sync(directory, args.tracking_uri):
                print(f"MLflow is still unreachable; records stay in {directory}", file=sys.stderr)
                return 1
            view = spool_view(directory)
        else:
            view = mlflow_view(uri, args.experiment, args.sweep)
    except (LookupError, FileNotFoundError, ValueError) as error:
        print(f"grokschedule report: {error}", file=sys.stderr)
        return 2
    except MlflowException as error:
        print(
            f"grokschedule report: cannot read MLflow at {uri} ({why(error)}); the sweep's "
            "local journal has the same account: --spool <sweep root>/mlflow_spool",
            file=sys.stderr,
        )
        return 2
    report = SweepReport.from_view(view, details=details)
    if details and report.overview is None and report.trials:
        report.overview = overview_png(report, view)
    text = render(report, args.format)
    if args.out is None:
        print(text, end="")
        return 0
    args.out.write_text(text, encoding="utf-8")
    if args.format != "text":
        print(render(report, "text"), end="")
    print(f"Wrote {args.format} report to {args.out}")
    return 0
