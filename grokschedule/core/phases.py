"""Per-trial phase state machine: what stage of grokking a run is in, and why we think so.

    warmup → memorizing → plateau → transition → grokked
                              └──────────────┴──→ stalled (verdict of the policy) | diverged

The tracker only *describes* a curve; the policy decides what to do about it. Each phase change
is kept with the signal values that caused it, so every later decision can be explained.

Divergence is a non-finite value, or a train loss back at chance that stays there
(``_ChanceWatch``). A spike of the train loss after memorization that comes back down is not
divergence but an Adam "slingshot" (Thilak et al. 2022), which many grokkers go through first:
it is counted in the signals (``_Slingshots``) and never stops a run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from grokschedule.core.contract import (
    LAST_SLINGSHOT_STEP,
    SLINGSHOT_HEIGHT,
    SLINGSHOTS,
    VAL_CORRECT_PROB,
    ZERO_LOSS_SHARE,
    Observation,
)
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
    """How the tracker reads a curve. ``mode`` orients the target metric.

    ``chance_loss`` is the train loss of a model that has learned nothing, ``ln(num_classes)``
    for cross-entropy (unset: the trial's first train loss when that result came before
    memorization); a train loss back above it for ``diverge_results`` results in a row, and
    not coming down, is a divergence. A spike after memorization above ``slingshot_factor`` ×
    the running minimum of the train loss (read as at least ``slingshot_floor``: below it,
    losses differ by float noise) that comes back under that mark is a slingshot.
    """

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
    diverge_results: int = 5  # sparse reports of the GPU bank's slingshots: ≤ 3 above ln 59
    chance_loss: float | None = None
    slingshot_factor: float = 10.0
    slingshot_floor: float = 1e-4

    def __post_init__(self) -> None:
        if not isinstance(self.diverge_results, int) or self.diverge_results < 1:
            raise ValueError(f"diverge_results must be an int >= 1, got {self.diverge_results!r}")
        chance = self.chance_loss
        if chance is not None and not (_is_number(chance) and math.isfinite(chance) and chance > 0):
            raise ValueError(f"chance_loss must be a positive number or None, got {chance!r}")
        if not (_is_number(self.slingshot_factor) and self.slingshot_factor > 1):
            raise ValueError(f"slingshot_factor must be > 1, got {self.slingshot_factor!r}")
        if not (_is_number(self.slingshot_floor) and self.slingshot_floor > 0):
            raise ValueError(f"slingshot_floor must be > 0, got {self.slingshot_floor!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# With no chance level (the first report already came after memorization, no ``chance_loss``),
# a loss is read as back at chance only above ln 2, the chance loss of the smallest
# classification task and so at or below every task's, and only for BLIND_FACTOR × as many
# results in a row: a blow-up sits there for good, while in the 750-curve GPU bank no slingshot
# keeps the loss above ln 2 for more than 5 results at any report interval from 100 to 2000.
BLIND_CHANCE_LOSS = math.log(2)
BLIND_FACTOR = 3
LEARNED = 0.5  # a loss under this share of the chance level has learned: it can climb back
STILL_FALLING = 0.9  # a loss under this share of its streak's low is still coming down


class _ChanceWatch:
    """Divergence of a finite train loss: back above the chance level, and staying there.

    The chance level is ``chance_loss`` when configured, else the trial's first train loss if
    that result came before memorization. A first result after memorization (reports every 500
    steps, a trial resumed from a checkpoint) carries no chance level: its loss (~1e-4) as a
    reference read every Adam slingshot as a blow-up, so then ``BLIND_CHANCE_LOSS`` and a
    longer streak stand in. "Staying" means not coming down: a result that sets a new low of
    the streak (by more than 10 %) starts the count again, so a spike on its way back down,
    however finely reported, never completes one. A few numbers per trial.
    """

    def __init__(self, config: PhaseConfig) -> None:
        self.level = config.chance_loss
        self.source = "chance_loss"
        self.needed = config.diverge_results
        self._blind_needed = BLIND_FACTOR * config.diverge_results
        self._learned = False  # the loss has been well under the level: it can climb back
        self._streak = 0
        self._streak_low = math.inf

    def update(self, loss: float, memorized: bool) -> str:
        """Why ``loss`` makes the run diverged, or ``""``."""
        level = self._calibrated(loss, memorized)
        if loss <= level:
            self._learned = self._learned or loss <= LEARNED * level
            self.restart()
            return ""
        if not self._learned:
            return ""  # still coming down from its initialization
        if loss < STILL_FALLING * self._streak_low:
            self._streak = 1
        else:
            self._streak += 1
        self._streak_low = min(self._streak_low, loss)
        if self._streak < self.needed:
            return ""
        return (
            f"train_loss {loss:.3g} stayed above {self.source} {level:.3g} for "
            f"{self._streak} results without coming down"
        )

    def restart(self) -> None:
        self._streak, self._streak_low = 0, math.inf

    def _calibrated(self, loss: float, memorized: bool) -> float:
        if self.level is None:
            if memorized:
                self.level, self.needed = BLIND_CHANCE_LOSS, self._blind_needed
                self.source = "ln 2 (no chance level: the first report came after memorization)"
            else:
                self.level, self.source = loss, "the chance level (its first train_loss)"
        return self.level


class _Slingshots:
    """Train-loss spikes after memorization that come back: Adam's slingshots.

    From the first memorized result on, a spike begins when the loss exceeds ``factor`` × its
    running minimum (read as at least ``floor``; spikes are left out of the minimum) and counts
    once the loss is back under that mark. Its height is log10(peak / minimum). A spike still
    open is not counted: it may be a blow-up. A few numbers per trial.
    """

    def __init__(self, factor: float, floor: float) -> None:
        self.factor = factor
        self.floor = floor
        self.count = 0
        self.height = 0.0
        self.last_step = 0.0  # the step of the latest one's peak
        self._low = math.inf  # running minimum since memorization
        self._reference: float | None = None  # the minimum when the open spike began
        self._peak = 0.0
        self._peak_step = 0.0

    @property
    def watching(self) -> bool:
        return self._low < math.inf

    def update(self, step: float, loss: float, memorized: bool) -> None:
        if not (self.watching or memorized):
            return
        reference = self._reference
        if reference is None:
            reference = max(self._low, self.floor)
            if loss > self.factor * reference:  # never while _low is inf: nothing to spike from
                self._reference, self._peak, self._peak_step = reference, loss, step
            else:
                self._low = min(self._low, loss)
            return
        if loss > self._peak:
            self._peak, self._peak_step = loss, step
        if loss <= self.factor * reference:
            self.count += 1
            self.height = math.log10(self._peak / reference)
            self.last_step = self._peak_step
            self._reference = None
            self._low = min(self._low, loss)

    def drop(self) -> None:
        """Forget an open spike (the weights it came from were rolled back)."""
        self._reference = None

    def signals(self) -> dict[str, float]:
        if not self.watching:
            return {}
        if not self.count:
            return {SLINGSHOTS: 0.0}
        return {
            SLINGSHOTS: float(self.count),
            SLINGSHOT_HEIGHT: self.height,
            LAST_SLINGSHOT_STEP: self.last_step,
        }


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
        self._chance = _ChanceWatch(config)
        self._slingshots = _Slingshots(config.slingshot_factor, config.slingshot_floor)
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
        self._chance.restart()
        self._slingshots.drop()
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
        if obs.train_loss is None:
            return ""
        return self._chance.update(obs.train_loss, self._memorized(obs))

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
        if obs.train_loss is not None:
            self._slingshots.update(obs.step, obs.train_loss, self._memorized(obs))
            self.signals.update(self._slingshots.signals())

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
