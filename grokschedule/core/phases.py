"""Per-trial phase state machine: what stage of grokking a run is in, and why we think so.

    warmup → memorizing → plateau → transition → grokked
                              └──────────────┴──→ stalled (verdict of the policy) | diverged

The tracker only *describes* a curve; the policy decides what to do about it. Each phase change
is kept with the signal values that caused it, so every later decision can be explained.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from grokschedule.core.contract import VAL_CORRECT_PROB, ZERO_LOSS_SHARE, Observation
from grokschedule.core.signals import FLAT, MetricWindow, Trend, log_trend, robust_trend


class Phase(str, Enum):
    WARMUP = "warmup"
    MEMORIZING = "memorizing"
    PLATEAU = "plateau"
    TRANSITION = "transition"
    GROKKED = "grokked"
    STALLED = "stalled"
    DIVERGED = "diverged"

    @property
    def terminal(self) -> bool:
        return self in (Phase.GROKKED, Phase.STALLED, Phase.DIVERGED)


@dataclass(frozen=True)
class PhaseConfig:
    """How the tracker reads a curve. ``mode`` orients the target metric."""

    grok_threshold: float
    mode: str = "max"
    memorized_acc: float = 0.99
    memorized_loss: float = 0.01
    warmup_results: int = 2
    window: int = 10
    transition_progress: float = 0.1
    min_loss_change: float = 0.05
    min_norm_change: float = 0.03
    min_prob_change: float = 0.02  # absolute: a rise from 1e-5 to 2e-5 means nothing
    collapse_share: float = 0.5


@dataclass(frozen=True)
class PhaseChange:
    step: float
    old: Phase
    new: Phase
    reason: str
    signals: Mapping[str, float]


class PhaseDetector:
    """Follows one trial's metric stream with bounded memory (a few ring buffers)."""

    def __init__(self, config: PhaseConfig) -> None:
        self.config = config
        self.phase = Phase.WARMUP
        self.changes: list[PhaseChange] = []
        self.results = 0
        self.step = 0.0
        self.memorized_step: float | None = None
        self.grokked_step: float | None = None
        self.baseline: float | None = None  # oriented target when memorization finished
        self.last_evidence_step: float | None = None
        self.signals: dict[str, float] = {}
        self.fired: tuple[str, ...] = ()
        self._first_train_loss: float | None = None
        self._best_train_loss = math.inf
        self._windows: dict[str, MetricWindow] = {}

    # -- reading the stream ---------------------------------------------------------------
    def update(self, obs: Observation) -> Phase:
        """Fold one observation in and return the (possibly new) phase."""
        self.results += 1
        self.step = obs.step
        if self.phase.terminal:
            return self.phase
        divergence = self._divergence(obs)
        if divergence:
            self._move(Phase.DIVERGED, divergence)
            return self.phase
        self._record(obs)
        self._measure(obs)
        if self._target_reached(obs.target):
            self.grokked_step = obs.step
            self._move(Phase.GROKKED, f"{self._fmt_target(obs.target)} reached the threshold")
        elif self.phase is Phase.WARMUP:
            if self.results >= self.config.warmup_results:
                self._move(Phase.MEMORIZING, f"{self.results} results seen")
        elif self.phase is Phase.MEMORIZING:
            if self._memorized(obs):
                self.memorized_step = obs.step
                self.baseline = self._oriented(obs.target)
                self.last_evidence_step = obs.step
                self._move(Phase.PLATEAU, f"train fit ({self._fmt_fit(obs)}), target not reached")
        elif self.phase is Phase.PLATEAU and self._progress() >= self.config.transition_progress:
            self._move(Phase.TRANSITION, f"target moved {self._progress():.0%} of the way")
        elif (
            self.phase is Phase.TRANSITION
            and self._progress() < self.config.transition_progress / 2
        ):
            self._move(Phase.PLATEAU, f"target fell back to {self._progress():.0%} of the way")
        return self.phase

    def mark_stalled(self, reason: str) -> None:
        """The policy's verdict that this run will not grok; recorded like any phase change."""
        self._move(Phase.STALLED, reason)

    def resume_plateau(self, reason: str) -> None:
        """Leave DIVERGED after a rollback restored the pre-kick weights."""
        self._best_train_loss = math.inf
        self._move(Phase.PLATEAU, reason)

    # -- derived quantities ---------------------------------------------------------------
    def steps_since_evidence(self) -> float:
        reference = self.last_evidence_step
        return 0.0 if reference is None else self.step - reference

    @property
    def collapsed(self) -> bool:
        return self.signals.get("zero_loss_share", 0.0) >= self.config.collapse_share

    def progress(self) -> float:
        return self._progress()

    # -- internals ------------------------------------------------------------------------
    def _oriented(self, value: float) -> float:
        return value if self.config.mode == "max" else -value

    def _target_reached(self, target: float) -> bool:
        return self._oriented(target) >= self._oriented(self.config.grok_threshold)

    def _progress(self) -> float:
        """Share of the way from the plateau baseline to the threshold, in [0, 1]."""
        if self.baseline is None or "target" not in self._windows:
            return 0.0
        gap = self._oriented(self.config.grok_threshold) - self.baseline
        if gap <= 0:
            return 1.0
        current = self._oriented(self._windows["target"].latest)
        return min(1.0, max(0.0, (current - self.baseline) / gap))

    def _memorized(self, obs: Observation) -> bool:
        if obs.train_acc is not None:
            return obs.train_acc >= self.config.memorized_acc
        return obs.train_loss is not None and obs.train_loss <= self.config.memorized_loss

    def _divergence(self, obs: Observation) -> str:
        for name, value in (("train_loss", obs.train_loss), ("target", obs.target)):
            if value is not None and not math.isfinite(value):
                return f"{name} is {value}"
        loss = obs.train_loss
        if loss is None:
            return ""
        if self._first_train_loss is None:
            self._first_train_loss = loss
        self._best_train_loss = min(self._best_train_loss, loss)
        if loss > 10 * self._first_train_loss and loss > 10 * self._best_train_loss + 1e-6:
            return f"train_loss {loss:.3g} is >10× its start {self._first_train_loss:.3g}"
        return ""

    def _record(self, obs: Observation) -> None:
        streams = {
            "target": self._oriented(obs.target),
            "val_loss": obs.val_loss,
            "weight_norm": obs.weight_norm,
            "correct_prob": obs.extras.get(VAL_CORRECT_PROB),
        }
        for name, value in streams.items():
            if value is not None and math.isfinite(value):
                if name not in self._windows:
                    self._windows[name] = MetricWindow(self.config.window)
                self._windows[name].append(obs.step, value)
        share = obs.extras.get(ZERO_LOSS_SHARE)
        if share is not None:
            self.signals["zero_loss_share"] = float(share)

    def _trend(self, name: str, log: bool) -> Trend:
        window = self._windows.get(name)
        if window is None:
            return FLAT
        estimator = log_trend if log else robust_trend
        return estimator(window.times(), window.values())

    def _measure(self, obs: Observation) -> None:
        """Compute the transition evidence over the recent window and note when it fired."""
        c = self.config
        val_loss = self._trend("val_loss", log=True)
        norm = self._trend("weight_norm", log=True)
        prob = self._trend("correct_prob", log=False)
        target = self._trend("target", log=False)
        gap = abs(c.grok_threshold - (self.baseline if self.baseline is not None else 0.0))
        self.signals.update(
            {
                "val_loss_change": val_loss.change,
                "weight_norm_change": norm.change,
                "correct_prob_change": prob.change,
                "target_change": target.change,
                "progress": self._progress(),
                "window_steps": max(val_loss.span, target.span),
            }
        )
        checks = {
            "val_loss falling": val_loss.falling(c.min_loss_change),
            "weight_norm decaying": norm.falling(c.min_norm_change),
            "correct-class prob rising": prob.rising(c.min_prob_change),
            "target rising": target.rising(max(gap, 1e-12) * 0.02),
        }
        self.fired = tuple(name for name, hit in checks.items() if hit)
        if self.fired and self.phase in (Phase.PLATEAU, Phase.TRANSITION):
            self.last_evidence_step = obs.step

    def _move(self, new: Phase, reason: str) -> None:
        if new is self.phase:
            return
        self.changes.append(PhaseChange(self.step, self.phase, new, reason, dict(self.signals)))
        self.phase = new

    def _fmt_target(self, target: float) -> str:
        return f"target {target:.4g}"

    def _fmt_fit(self, obs: Observation) -> str:
        if obs.train_acc is not None:
            return f"train_acc {obs.train_acc:.3f}"
        return f"train_loss {obs.train_loss:.3g}"
