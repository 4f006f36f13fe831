"""Console output for a grokking-aware sweep: a line per decision change, a periodic table.

Tune's default output (``RAY_AIR_NEW_OUTPUT``) ignores custom ``ProgressReporter`` columns, so
this is a plain ``tune.Callback`` that prints what the scheduler decided and why.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from ray.tune import Callback
from ray.tune.experiment import Trial

from grokschedule.adapters.scheduler import GrokScheduler
from grokschedule.core.contract import PROBE_EXACT_MATCH, PROBE_PPL, parse_probe_metric
from grokschedule.core.decision import Decision
from grokschedule.core.summary import describe_config


def trial_label(trial: Trial) -> str:
    """Trial id plus the hyperparameters the search chose, e.g. ``a1b2c_00003 p=59 wd=1.0``."""
    chosen = {k.split("/")[-1]: v for k, v in trial.evaluated_params.items()}
    return f"{trial.trial_id} {describe_config(chosen, (), sep=' ')}".strip()


def _p_grok(decision: Decision | None) -> str:
    if decision is None:
        return "-"
    if "p_grok" in decision.signals:
        return f"{decision.signals['p_grok']:.2f}"
    return f"~{decision.score:.2f}"  # the heuristic score: no prediction for this trial


def _eta(decision: Decision | None) -> str:
    if decision is None or "eta_steps" not in decision.signals:
        return "-"
    eta = decision.signals["eta_steps"]
    return f"{eta / 1000:.1f}k" if eta >= 10_000 else f"{eta:.0f}"


PROBE_WIDTH = 40  # at most: the column is as wide as its widest cell


def probe_cell(result: dict[str, Any]) -> str:
    """A language model's probe sets in a few characters: exact-match/perplexity per set,
    e.g. ``val 0.41/2.3 | probe 0.05/9.1`` ("" when none is reported)."""
    sets: dict[str, dict[str, float]] = {}
    for key, value in result.items():
        parsed = parse_probe_metric(key)
        if parsed is not None and parsed[1] in (PROBE_EXACT_MATCH, PROBE_PPL):
            sets.setdefault(parsed[0], {})[parsed[1]] = float(value)
    parts = []
    for name, stats in sets.items():
        em, ppl = stats.get(PROBE_EXACT_MATCH), stats.get(PROBE_PPL)
        em_text = "-" if em is None else f"{em:.2f}"
        parts.append(f"{name} {em_text}/{'-' if ppl is None else f'{ppl:.3g}'}")
    return " | ".join(parts)


def _fmt(value: Any, width: int) -> str:
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    return text[:width].ljust(width)


class GrokConsoleReporter(Callback):
    """Print each trial's step, train/val metrics, phase, P(grok), ETA and last decision with
    its reason. P(grok) and ETA come from the scheduler's calibrated predictor (``-`` before a
    trial has memorized, or with ``predictor=False``, where the heuristic score is shown).
    When a trial reports probe-set signals (a language model's ``grok/probe/<set>/*``), a
    ``probe EM/ppl`` column after ``val`` shows each set's exact-match and perplexity."""

    COLUMNS = (
        ("trial", 44),
        ("step", 6),
        ("train", 6),
        ("val", 6),
        ("phase", 10),
        ("P(grok)", 7),
        ("ETA", 7),
    )

    def __init__(
        self,
        scheduler: GrokScheduler,
        train_metric: str = "train_acc",
        interval_s: float = 15.0,
        stream: TextIO | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.train_metric = train_metric
        self.interval_s = interval_s
        self.stream = stream  # None: whatever sys.stdout is at print time (and picklable)
        self._last_table = 0.0
        self._announced: dict[str, tuple[str, str]] = {}

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        decision = self.scheduler.last_decision(trial.trial_id)
        if decision is not None:
            key = (decision.kind.value, decision.phase.value)
            if self._announced.get(trial.trial_id) != key:
                self._announced[trial.trial_id] = key
                self._print(
                    f"[{trial_label(trial)}] step {decision.step:.0f}: {decision.kind.value} "
                    f"({decision.phase.value}) {decision.reason}"
                )
        if time.monotonic() - self._last_table >= self.interval_s:
            self._last_table = time.monotonic()
            self._print(self.table(trials))

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self._print(self.table(trials))

    def table(self, trials: list[Trial]) -> str:
        metric = self.scheduler.metric
        columns = list(self.COLUMNS)
        probes = [probe_cell(trial.last_result or {}) for trial in trials]
        width = min(PROBE_WIDTH, max([len("probe EM/ppl"), *map(len, probes)]))
        if any(probes):
            columns.insert(4, ("probe EM/ppl", width))
        header = "  ".join(name.ljust(width) for name, width in columns) + "  last decision"
        rows = [header]
        for trial, probe in zip(trials, probes, strict=True):
            result = trial.last_result or {}
            decision = self.scheduler.last_decision(trial.trial_id)
            cells = [
                (trial_label(trial), 44),
                (result.get(self.scheduler.time_attr, "-"), 6),
                (result.get(self.train_metric, "-"), 6),
                (result.get(metric, "-"), 6),
                (decision.phase.value if decision else trial.status.lower(), 10),
                (_p_grok(decision), 7),
                (_eta(decision), 7),
            ]
            if any(probes):
                cells.insert(4, (probe or "-", width))
            last = f"{decision.kind.value}: {decision.reason}" if decision else ""
            rows.append("  ".join(_fmt(v, w) for v, w in cells) + "  " + last[:100])
        return "\n".join(rows)

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)
