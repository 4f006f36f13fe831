"""SweepLogger: everything a reviewer sees in MLflow for one grokking-aware sweep.

One parent run per sweep (scheduler settings, search space, live and final totals, an overview
plot and the sweep report) with one nested run per trial (config as params, step-indexed metrics,
phase and verdict tags, the decision timeline, a curves plot), every run with MLflow's context
tags (user, source, git commit) as ``mlflow.start_run`` would set them. Plain MLflow and
matplotlib, no Ray:
``grokschedule.adapters.mlflow_callback`` drives it from Tune callbacks, and anything else that
produces trials and decisions can drive it the same way.

Every call only appends to the sweep's local journal (``spool``); a background ``Sender`` delivers
it. So a slow or absent MLflow never stalls the caller, and a logger created again with the same
``sweep_id`` (``Tuner.restore``) continues the same runs instead of opening new ones.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.git_utils import get_git_commit

from grokschedule.core.decision import Decision
from grokschedule.core.summary import judge
from grokschedule.tracking import names
from grokschedule.tracking.plots import plotted, trial_figure
from grokschedule.tracking.report import SweepReport, overview_png, render
from grokschedule.tracking.sender import Sender
from grokschedule.tracking.spool import RECORDS, Spool, now_ms, read_records
from grokschedule.tracking.timeline import (
    describe_totals,
    sweep_totals,
    timeline_html,
    timeline_markdown,
    verdict_tags,
)
from grokschedule.tracking.views import spool_view

logger = logging.getLogger("grokschedule.tracking")

MAX_PARAM_VALUE, MAX_TAG_VALUE = 6000, 8000  # MLflow's limits; longer values reject a batch
# MLflow's rule for metric names; one bad name would make it refuse a whole batch.
_METRIC_NAME = re.compile(r"^[/\w.\- :]+$")


def check_tracking_uri(uri: str) -> None:
    """Refuse credentials inside the URI: they would be pickled with Tune's experiment state
    and written to the journal. MLflow reads MLFLOW_TRACKING_USERNAME/PASSWORD (or
    MLFLOW_TRACKING_TOKEN) from the environment instead."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https") and (parts.username or parts.password):
        raise ValueError(
            "the MLflow tracking URI must not carry credentials; set MLFLOW_TRACKING_USERNAME "
            "and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment"
        )


def context_tags() -> dict[str, str]:
    """MLflow's run context tags for this process (``mlflow.user``, ``mlflow.source.name`` and
    ``.type``, ``mlflow.source.git.commit`` and, when known, branch and repo URL), from MLflow's
    own resolvers. Those find the commit from the main script's directory; a console script
    installed outside the checkout has none, so the working directory's checkout counts too.
    Resolve it once per sweep (tens of milliseconds; it reads git)."""
    tags = {k: str(v) for k, v in resolve_tags().items() if k.startswith("mlflow.")}
    if names.GIT_COMMIT not in tags:
        commit = get_git_commit(os.getcwd())
        if commit:
            tags[names.GIT_COMMIT] = commit
    for key, value in tags.items():  # a remote cloned with a token must not hand it to MLflow
        parts = urlsplit(value)
        if key.endswith("repoURL") and parts.hostname and (parts.username or parts.password):
            tags[key] = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    return tags


class SweepLogger:
    """One sweep's runs in MLflow, written through a local journal (see the module docstring).

    Args:
    spool_root: Where sweeps keep their journals (``<spool_root>/<sweep_id>/``).
    tracking_uri: MLflow tracking URI, without credentials.
    experiment: MLflow experiment name (created if missing).
    sweep_id: Stable id of this sweep; the same id resumes the same runs.
    metric, threshold, max_t, max_extension: The scheduler's target and budget, for verdicts,
        totals and plots.
    close_timeout_s: How long ``end_sweep`` waits for an unreachable MLflow before it leaves
        the rest in the journal.
    run_context: MLflow context tags for every run (default: ``context_tags()``, resolved here,
        on the driver, once).
    """

    def __init__(
        self,
        spool_root: Path,
        tracking_uri: str,
        experiment: str,
        sweep_id: str,
        *,
        metric: str,
        threshold: float,
        max_t: float,
        max_extension: float,
        close_timeout_s: float = 30.0,
        run_context: Mapping[str, str] | None = None,
    ) -> None:
        check_tracking_uri(tracking_uri)
        self.run_context = dict(context_tags() if run_context is None else run_context)
        self.sweep_id = sweep_id
        self.metric, self.threshold = metric, threshold
        self.max_t, self.max_extension = max_t, max_extension
        self.close_timeout_s = close_timeout_s
        directory = Path(spool_root) / sweep_id
        resumed = (directory / RECORDS).exists()
        self.spool = Spool(directory)
        self._created: set[str] = set()
        self._verdicts: dict[str, dict[str, str]] = {}  # ended trials' verdict tags
        self._history: dict[str, dict[str, list[tuple[float, float]]]] = {}
        self._tagged: dict[str, tuple[str, str]] = {}
        self._steps: dict[str, float] = {}  # last step reported per trial
        # The parent run's last totals and their step: totals are logged only when they change,
        # each time at the next step, so each (sweep/* metric, step) is logged once.
        self._totals: dict[str, float] = {}
        self._totals_step = 0
        if resumed:
            self._resume()
        else:
            self.spool.append(
                {
                    "op": "sweep",
                    "sweep_id": sweep_id,
                    "experiment": experiment,
                    "tracking_uri": tracking_uri,
                    "ts": now_ms(),
                }
            )
        self._plotter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grokschedule-plot")
        self.sender = Sender(self.spool, tracking_uri, experiment)
        self.sender.start()

    @property
    def directory(self) -> Path:
        return self.spool.directory

    # -- runs -----------------------------------------------------------------------------------
    def start_sweep(
        self,
        name: str,
        settings: Mapping[str, Any],
        search_space: Mapping[str, Any],
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Open the parent run (once per sweep id) with the scheduler settings and search space."""
        own = {
            "metric": self.metric,
            "grok_threshold": self.threshold,
            "max_t": self.max_t,
            "max_extension": self.max_extension,
        }
        params = {f"{names.SETTING_PREFIX}{k}": v for k, v in {**settings, **own}.items()}
        params.update({f"{names.SPACE_PREFIX}{k}": v for k, v in search_space.items()})
        self._create(names.PARENT_KEY, name, params, tags or {}, parent=None)

    def start_trial(
        self,
        key: str,
        name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Open a trial's run nested under the sweep; a restarted trial keeps its run."""
        self._create(key, name, params, tags or {}, parent=names.PARENT_KEY)
        self._history.setdefault(key, {})

    def log_result(
        self,
        key: str,
        step: float,
        metrics: Mapping[str, float],
        decision: Decision | None = None,
    ) -> None:
        """One result: its scalars (and the signals behind ``decision``) at the trial's step,
        and the phase tags when the phase or reason changed. A result at or before the trial's
        last step (a trial resumed from an older checkpoint repeats steps) is not logged: MLflow
        keeps each (metric, step) once, with the value the scheduler decided on."""
        if step <= self._steps.get(key, -math.inf):
            return
        values = {k: float(v) for k, v in metrics.items() if _loggable(k, v)}
        if decision is not None:
            for name, value in decision.signals.items():
                if _loggable(name, value):
                    values[f"{names.SCHEDULER_PREFIX}{name}"] = float(value)
        self.spool.append(
            {"op": "metrics", "key": key, "step": int(step), "ts": now_ms(), "values": values}
        )
        self._steps[key] = float(step)
        history = self._history.setdefault(key, {})
        for name, value in values.items():
            if plotted(name):
                history.setdefault(name, []).append((float(step), value))
        if decision is not None:
            label = (decision.phase.value, decision.reason)
            if self._tagged.get(key) != label:
                self._tagged[key] = label
                line = f"{decision.kind.value} @ {decision.step:.0f}: {decision.reason}"
                self._tags(key, {names.PHASE: decision.phase.value, names.LAST_DECISION: line})

    def end_trial(
        self,
        key: str,
        title: str,
        decisions: Sequence[Decision],
        error: str | None = None,
        status: str | None = None,
    ) -> dict[str, str]:
        """Close a trial's run with its verdict, decision timeline and curves; returns the
        verdict tags. ``decisions``: the trial's decision log. Also refreshes the sweep's live
        totals. ``status`` overrides the run status (FAILED with an error, else FINISHED), e.g.
        KILLED for an interrupted sweep."""
        history = self._history.pop(key, {})
        verdict = judge(decisions, self._steps.get(key, 0.0), self.max_t, error)
        tags = verdict_tags(verdict)
        if decisions:
            last = decisions[-1]
            tags[names.VERDICT] = f"{last.kind.value}: {last.reason}"
        self._tags(key, tags)
        records = [d.to_dict() for d in decisions]
        self._artifact(key, names.DECISIONS_JSON, json.dumps(records, indent=1).encode())
        self._artifact(key, names.TIMELINE_MD, timeline_markdown(title, verdict, records).encode())
        self._artifact(key, names.TIMELINE_HTML, timeline_html(title, verdict, records).encode())
        self.spool.append(
            {
                "op": "end_run",
                "key": key,
                "status": status or ("FAILED" if error else "FINISHED"),
                "ts": now_ms(),
            }
        )
        # Plotting takes most of a second: off Tune's event loop, which would otherwise hold
        # back every trial's next result meanwhile.
        job = self._plotter.submit(self._plot_trial, key, history, records, title, verdict.outcome)
        job.add_done_callback(_warn_if_failed)
        self._verdicts[key] = tags
        self._log_totals()
        return tags

    def _plot_trial(
        self,
        key: str,
        history: Mapping[str, Sequence[tuple[float, float]]],
        decisions: Sequence[Mapping[str, Any]],
        title: str,
        outcome: str,
    ) -> None:
        curves = trial_figure(
            history,
            decisions,
            title=title,
            outcome=outcome,
            metric=self.metric,
            threshold=self.threshold,
            max_t=self.max_t,
        )
        self._artifact(key, names.CURVES_PNG, curves)

    def is_open(self, key: str) -> bool:
        """A trial run that was started and has not ended yet."""
        return key in self._created and key != names.PARENT_KEY and key not in self._verdicts

    def end_sweep(self, status: str = "FINISHED") -> bool:
        """Final totals, overview plot and report on the parent run, then deliver everything
        (waiting at most ``close_timeout_s`` for an unreachable MLflow). True if all was sent."""
        self._plotter.shutdown(wait=True)
        totals = self._log_totals()
        self._tags(names.PARENT_KEY, {names.SUMMARY: describe_totals(totals)})
        view = spool_view(self.directory)
        report = SweepReport.from_view(view, details=True)
        overview = overview_png(report, view)
        self._artifact(names.PARENT_KEY, names.OVERVIEW_PNG, overview)
        report.overview = overview
        self._artifact(names.PARENT_KEY, names.SUMMARY_MD, render(report, "markdown").encode())
        self._artifact(names.PARENT_KEY, names.SUMMARY_HTML, render(report, "html").encode())
        self.spool.append(
            {"op": "end_run", "key": names.PARENT_KEY, "status": status, "ts": now_ms()}
        )
        return self.close()

    def close(self) -> bool:
        self._plotter.shutdown(wait=True)
        done = self.sender.close(self.close_timeout_s)
        self.spool.close()
        return done

    # -- internals ------------------------------------------------------------------------------
    def _create(
        self,
        key: str,
        name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        parent: str | None,
    ) -> None:
        if key in self._created:
            return
        self._created.add(key)
        tags = {
            **self.run_context,
            **tags,
            names.ROLE: "trial" if parent else "sweep",
            names.SWEEP_ID: self.sweep_id,
            names.RUN_KEY: f"{self.sweep_id}/{key}",
        }
        self.spool.append(
            {
                "op": "create_run",
                "key": key,
                "name": name,
                "parent": parent,
                "tags": tags,
                "ts": now_ms(),
            }
        )
        values = {k: str(v)[:MAX_PARAM_VALUE] for k, v in params.items()}
        self.spool.append({"op": "params", "key": key, "params": values})

    def _tags(self, key: str, tags: Mapping[str, str]) -> None:
        values = {k: str(v)[:MAX_TAG_VALUE] for k, v in tags.items()}
        self.spool.append({"op": "tags", "key": key, "tags": values})

    def _artifact(self, key: str, path: str, data: bytes) -> None:
        directory = path.rpartition("/")[0]
        stored = self.spool.store_file(key, path, data)
        self.spool.append(
            {"op": "artifact", "key": key, "file": stored, "artifact_path": directory}
        )

    def _log_totals(self) -> dict[str, float]:
        """Totals over every trial started so far, on the parent run when they changed, at the
        next step (1, 2, ...: in a sweep whose trials each end once, the number ended). Not at
        ``len(self._verdicts)``: ``end_sweep`` after the last trial, or a trial ended again
        (retried after a failure, resumed errored), would log a second value at that step."""
        trials = [self._verdicts.get(key, {}) for key in self._created - {names.PARENT_KEY}]
        totals = sweep_totals(trials, self.max_t)
        values = {f"{names.SWEEP_PREFIX}{k}": float(v) for k, v in totals.items()}
        if values != self._totals:
            self._totals, self._totals_step = values, self._totals_step + 1
            self.spool.append(
                {
                    "op": "metrics",
                    "key": names.PARENT_KEY,
                    "step": self._totals_step,
                    "ts": now_ms(),
                    "values": values,
                }
            )
        return totals

    def _resume(self) -> None:
        """Pick up a journal written before a driver restart: known runs, verdicts, curves."""
        for record in read_records(self.directory):
            op, key = record["op"], record.get("key", "")
            if op == "create_run":
                self._created.add(key)
            elif op == "tags" and names.CATEGORY in record["tags"]:
                self._verdicts[key] = record["tags"]
            elif op == "tags" and names.PHASE in record["tags"]:
                last = record["tags"][names.LAST_DECISION].split(": ", 1)[-1]
                self._tagged[key] = (record["tags"][names.PHASE], last)
            elif op == "metrics" and key == names.PARENT_KEY:
                self._totals, self._totals_step = dict(record["values"]), int(record["step"])
            elif op == "metrics":
                self._steps[key] = float(record["step"])
                history = self._history.setdefault(key, {})
                for name, value in record["values"].items():
                    if plotted(name):
                        history.setdefault(name, []).append((float(record["step"]), value))
        for key in self._verdicts:
            self._history.pop(key, None)
        logger.info("resuming sweep %s from %s", self.sweep_id, self.directory)


def _warn_if_failed(job: Future[None]) -> None:
    error = job.exception()
    if error is not None:
        logger.warning("grokschedule: a trial plot failed: %r", error)


def _loggable(name: str, value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and bool(_METRIC_NAME.match(name))
    )
