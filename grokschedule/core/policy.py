"""GrokPolicy: turn each observation of a trial into a decision with a reason and its evidence.

The rules, in order of precedence:

1. diverged (non-finite or exploding loss)                 → STOP
2. target reached (grokked)                                 → STOP, or CONTINUE if configured
3. with interventions: a kick that diverged or made training
   worse without recovering                                 → ROLLBACK
4. past ``max_t``: transition under way or fresh evidence,
   and still inside ``max_t + max_extension``               → EXTEND (keep paying)
   otherwise                                                → STOP (budget)
5. with interventions: plateau quiet for ``kick_at`` × the
   patience, or (with the predictor) past ``judge_after`` ×
   memorization and not predicted to grok by ``max_t``,
   and kicks left                                           → KICK
6. plateau with no transition evidence for longer than the
   patience — ``patience_factor`` × the trial's own
   memorization time, at least ``min_patience`` steps       → STOP (never-grok)
7. otherwise                                                → CONTINUE

Patience is measured from the last *evidence* of a coming transition (validation loss falling,
weight norm decaying, probability on the correct class rising, target rising), so a run that
keeps showing signs of life is never stopped on its plateau.

With the calibrated ``GrokPredictor`` (``PolicyConfig(predictor=True)``, the default), rules 4
and 6 also read P(grok) and its ETA, computed from a bounded per-trial history:

* a plateau at ≥ ``judge_after`` × its memorization time with P(grok) < ``stop_below`` (two
  predictions in a row) is stopped at once (never-grok), and a run under that bar (plateau or
  transition) is not EXTENDed at ``max_t`` — unless interventions are on, where such a run is
  kicked first;
* a plateau whose patience ran out but whose P(grok) ≥ ``keep_above`` is kept (the hand
  patience rule alone stops slow grokkers on the quiet stretch before their turn);
* at ``max_t``, a run with P(grok) ≥ ``keep_above`` whose ETA lands inside the extension is
  EXTENDed even before its target has started to move.

``Decision.signals`` then carries ``p_grok`` and ``eta_steps``, ``Decision.score`` is P(grok),
and the reasons quote them with the features that weighed most.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Any

from grokschedule.core.contract import SIGNAL_PREFIX, Observation
from grokschedule.core.kick_policy import KickConfig, KickPolicy
from grokschedule.core.phases import Phase, PhaseConfig, PhaseDetector
from grokschedule.core.predictor import GrokHistory, GrokPredictor, Prediction


class DecisionKind(str, Enum):
    CONTINUE = "CONTINUE"
    EXTEND = "EXTEND"
    STOP = "STOP"
    KICK = "KICK"
    ROLLBACK = "ROLLBACK"


@dataclass(frozen=True)
class Decision:
    """What to do with a trial now, why, and the signal values behind it."""

    kind: DecisionKind
    reason: str
    step: float
    phase: Phase
    score: float
    signals: dict[str, float] = field(default_factory=dict)
    command: dict[str, Any] | None = None  # for KICK / ROLLBACK: what the trainer must do

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind.value
        data["phase"] = self.phase.value
        return data


def _is_accuracy(metric: str) -> bool:
    return "acc" in metric.lower()


@dataclass(frozen=True)
class PolicyConfig:
    """The scheduler's knobs; validated here so bad arguments fail before any trial runs."""

    metric: str = "val_acc"
    mode: str = "max"
    grok_threshold: float = 0.95
    max_t: float = 20_000
    max_extension: float | None = None  # default: max_t / 2
    patience_factor: float = 10.0
    min_patience: float | None = None  # default: max_t / 4
    stop_on_grok: bool = True
    phases: dict[str, Any] = field(default_factory=dict)
    interventions: KickConfig | None = None
    # The calibrated predictor: True for the shipped coefficients, a path to a predictor JSON,
    # or False for the hand rules alone.
    predictor: bool | str = True
    # P(grok) under which a plateau is stopped (after judge_after); None: the value the
    # predictor file recommends (chosen on held-out ops so that almost no grokker falls below it)
    stop_below: float | None = None
    keep_above: float = 0.5  # P(grok) at or over which patience does not stop a plateau
    judge_after: float = 2.0  # × memorization time before P(grok) may stop a run

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {self.mode!r}")
        if (
            not (isinstance(self.max_t, int | float) and math.isfinite(self.max_t))
            or self.max_t <= 0
        ):
            raise ValueError(f"max_t must be a positive number, got {self.max_t!r}")
        if not isinstance(self.grok_threshold, int | float) or not math.isfinite(
            self.grok_threshold
        ):
            raise ValueError(f"grok_threshold must be a finite number, got {self.grok_threshold!r}")
        if _is_accuracy(self.metric) and not 0.0 < self.grok_threshold <= 1.0:
            raise ValueError(
                f"grok_threshold must be in (0, 1] for accuracy metric {self.metric!r}, "
                f"got {self.grok_threshold}"
            )
        if self.mode == "min" and self.grok_threshold < 0 and "loss" in self.metric.lower():
            raise ValueError(f"grok_threshold must be >= 0 for loss metric {self.metric!r}")
        for name in ("max_extension", "min_patience"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.patience_factor <= 0:
            raise ValueError(f"patience_factor must be > 0, got {self.patience_factor}")
        if not isinstance(self.predictor, bool | str):
            raise ValueError(
                f"predictor must be True, False or a path to a predictor JSON, "
                f"got {self.predictor!r}"
            )
        if isinstance(self.predictor, str) and not Path(self.predictor).is_file():
            raise ValueError(f"predictor file not found: {self.predictor!r}")
        for name in ("stop_below", "keep_above"):
            value = getattr(self, name)
            if value is None and name == "stop_below":
                continue
            if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
        if self.stop_below is not None and self.stop_below >= self.keep_above:
            raise ValueError(
                f"stop_below ({self.stop_below}) must be < keep_above ({self.keep_above})"
            )
        if not isinstance(self.judge_after, int | float) or not self.judge_after >= 1.0:
            raise ValueError(f"judge_after must be >= 1 (× memorization), got {self.judge_after}")
        PhaseConfig(grok_threshold=self.grok_threshold, mode=self.mode, **self.phases)

    @property
    def extension(self) -> float:
        return self.max_t / 2 if self.max_extension is None else self.max_extension

    @property
    def patience_floor(self) -> float:
        return self.max_t / 4 if self.min_patience is None else self.min_patience


@cache
def _default_predictor() -> GrokPredictor:
    return GrokPredictor.from_default()


def load_predictor(choice: bool | str) -> GrokPredictor | None:
    """``True``: the shipped predictor; a path: that JSON file; ``False``: none."""
    if choice is False:
        return None
    if choice is True:
        return _default_predictor()
    return GrokPredictor.from_json(Path(choice))


# Recompute a trial's prediction when its step has grown by this share since the last one: the
# features are read against ln(step), so 5 % later says little new, and most reports are spared.
PREDICT_EVERY = 0.05


class GrokPolicy:
    """Holds one PhaseDetector (and, with the predictor, one bounded GrokHistory) per trial and
    decides on every observation."""

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self.trackers: dict[str, PhaseDetector] = {}
        self.last_decision: dict[str, Decision] = {}
        self.log: dict[str, list[Decision]] = {}
        self.kicks = KickPolicy(config.interventions) if config.interventions else None
        self.predictor = load_predictor(config.predictor)
        self.histories: dict[str, GrokHistory] = {}
        self.predictions: dict[str, Prediction] = {}
        self.low_streak: dict[str, int] = {}  # consecutive predictions under stop_below
        recommended = self.predictor.recommended_stop_below if self.predictor else 0.0
        self.stop_below: float = (
            min(recommended, config.keep_above / 2)
            if config.stop_below is None
            else config.stop_below
        )

    def tracker(self, trial_id: str) -> PhaseDetector:
        if trial_id not in self.trackers:
            c = self.config
            tracker_config = PhaseConfig(grok_threshold=c.grok_threshold, mode=c.mode, **c.phases)
            self.trackers[trial_id] = PhaseDetector(tracker_config)
        return self.trackers[trial_id]

    def patience(self, tracker: PhaseDetector) -> float:
        memorized = tracker.memorized_step or 0.0
        patience = max(self.config.patience_factor * memorized, self.config.patience_floor)
        # Softmax collapse (arXiv 2501.04697) is a never-grok marker: halve the patience.
        return patience / 2 if tracker.collapsed else patience

    def observe(self, trial_id: str, obs: Observation) -> Decision:
        tracker = self.tracker(trial_id)
        phase = tracker.update(obs)
        self._record(trial_id, tracker, obs)
        if self.kicks is not None:
            self.kicks.absorb(trial_id, obs.control, self._train(obs))
        kind, reason, command = self._intervene(trial_id, tracker, phase, obs)
        if kind is None:
            kind, reason = self._decide(trial_id, tracker, tracker.phase)
            command = None
        if kind is DecisionKind.STOP and tracker.phase in (
            Phase.PLATEAU,
            Phase.TRANSITION,
            Phase.MEMORIZING,
        ):
            tracker.mark_stalled(reason)
            if self.kicks is not None:
                self.kicks.fail_unjudged(trial_id)
        prediction = self.prediction(trial_id)
        signals = {k: round(v, 6) for k, v in tracker.signals.items()}
        if prediction is not None:
            signals["p_grok"] = float(prediction.p_grok)
            if prediction.eta_steps is not None and not tracker.phase.terminal:
                signals["eta_steps"] = round(float(prediction.eta_steps), 1)  # none once over
        decision = Decision(
            kind=kind,
            reason=reason,
            step=obs.step,
            phase=tracker.phase,
            score=self._score(tracker, prediction),
            signals=signals,
            command=command,
        )
        self._remember(trial_id, decision)
        return decision

    def quiet_steps(self, trial_id: str, tracker: PhaseDetector) -> float:
        """Steps since the last transition evidence — or since the last kick took effect."""
        quiet = tracker.steps_since_evidence()
        if self.kicks is not None:
            kicked = self.kicks.trial(trial_id).last_kick_step
            if kicked is not None and math.isfinite(kicked):
                quiet = min(quiet, tracker.step - kicked)
        return quiet

    def forget(self, trial_id: str) -> None:
        """Drop a finished trial's tracker (its decision log stays for reporting)."""
        self.trackers.pop(trial_id, None)
        self.histories.pop(trial_id, None)
        self.predictions.pop(trial_id, None)
        self.low_streak.pop(trial_id, None)

    def prediction(self, trial_id: str) -> Prediction | None:
        """The trial's latest P(grok)/ETA, or ``None`` (no predictor, not on a plateau yet)."""
        return self.predictions.get(trial_id)

    # -- the predictor --------------------------------------------------------------------------
    def _record(self, trial_id: str, t: PhaseDetector, obs: Observation) -> None:
        """Feed the trial's bounded history and refresh its prediction when it is due."""
        predictor = self.predictor
        if predictor is None:
            return
        if t.phase.terminal:
            if t.phase is not Phase.GROKKED:
                self.predictions.pop(trial_id, None)
            return
        history = self.histories.get(trial_id)
        if history is None:
            tc = t.config
            history = GrokHistory(predictor.capacity, tc.memorized_acc, tc.memorized_loss)
            self.histories[trial_id] = history
        if not math.isfinite(obs.step) or obs.step <= history.step:
            return  # a repeated or older step (a resumed trial): nothing new to learn
        c = self.config
        val_acc = obs.target if _is_accuracy(c.metric) and c.mode == "max" else None
        history.append(
            obs.step,
            {
                "train_loss": obs.train_loss,
                "train_acc": obs.train_acc,
                "val_loss": obs.val_loss,
                "val_acc": val_acc,
                "weight_norm": obs.weight_norm,
                **{k: v for k, v in obs.extras.items() if k.startswith(SIGNAL_PREFIX)},
            },
        )
        if t.phase not in (Phase.PLATEAU, Phase.TRANSITION) or history.memorized_step is None:
            return
        last = self.predictions.get(trial_id)
        if last is None or last.step is None or obs.step >= last.step * (1 + PREDICT_EVERY):
            prediction = predictor.predict(history)
            self.predictions[trial_id] = prediction
            low = prediction.p_grok < self.stop_below
            self.low_streak[trial_id] = self.low_streak.get(trial_id, 0) + 1 if low else 0

    def _memorization_ratio(self, trial_id: str) -> float:
        """Step over the memorization step as the tracker saw it (the patience's basis too)."""
        tracker = self.trackers.get(trial_id)
        if tracker is None or not tracker.memorized_step:
            return 0.0
        return tracker.step / tracker.memorized_step

    def _hopeless(self, trial_id: str) -> Prediction | None:
        """The prediction, when it says to stop this plateau now."""
        prediction = self.prediction(trial_id)
        if prediction is None or self.kicks is not None:  # with kicks, kick before stopping
            return None
        c = self.config
        if (  # two predictions in a row, so one noisy reading does not kill a run
            self.low_streak.get(trial_id, 0) >= 2
            and self._memorization_ratio(trial_id) >= c.judge_after
        ):
            return prediction
        return None

    def _behind_schedule(self, trial_id: str, t: PhaseDetector) -> Prediction | None:
        """The prediction, when a plateau past ``judge_after`` × memorization is not expected to
        grok by ``max_t``: such a run is worth a kick even while it shows weak evidence, which
        keeps the quiet-plateau rule from ever firing."""
        prediction = self.prediction(trial_id)
        if prediction is None or self._memorization_ratio(trial_id) < self.config.judge_after:
            return None
        eta = prediction.eta_steps
        on_time = eta is not None and t.step + eta <= self.config.max_t
        if prediction.p_grok >= self.config.keep_above and on_time:
            return None
        return prediction

    def _promising(self, trial_id: str) -> Prediction | None:
        prediction = self.prediction(trial_id)
        if prediction is None or prediction.p_grok < self.config.keep_above:
            return None
        return prediction

    # -- rules ------------------------------------------------------------------------------
    @staticmethod
    def _train(obs: Observation) -> tuple[float, float]:
        loss = math.nan if obs.train_loss is None else obs.train_loss
        acc = math.nan if obs.train_acc is None else obs.train_acc
        return loss, acc

    def _intervene(
        self, trial_id: str, t: PhaseDetector, phase: Phase, obs: Observation
    ) -> tuple[DecisionKind | None, str, dict[str, Any] | None]:
        """Rollback and kick decisions; ``None`` leaves the decision to the plain rules."""
        kicks = self.kicks
        if kicks is None:
            return None, "", None
        train = self._train(obs)
        kicks.credit(trial_id, t.last_evidence_step, grokked=phase is Phase.GROKKED)
        harm = kicks.harm(trial_id, obs.step, train, diverged=phase is Phase.DIVERGED)
        if harm:
            command_id = kicks.order_rollback(trial_id)
            if phase is Phase.DIVERGED:
                t.resume_plateau(f"rolled back: {harm}")
            return (
                DecisionKind.ROLLBACK,
                f"rollback: {harm}",
                {"id": command_id, "type": "rollback"},
            )
        if phase is not Phase.PLATEAU or t.step >= self.config.max_t:
            return None, "", None
        quiet, patience = self.quiet_steps(trial_id, t), self.patience(t)
        behind = self._behind_schedule(trial_id, t)
        if quiet < kicks.config.kick_at * patience and behind is None:
            return None, "", None
        chosen = kicks.choose(trial_id, obs.step, train)
        if chosen is None:
            return None, "", None
        command_id, kick = chosen
        why = (
            f"plateau quiet {quiet:.0f} steps ≥ {kicks.config.kick_at:g}× patience {patience:.0f}"
            if behind is None
            else f"not predicted to grok by max_t {self.config.max_t:.0f}: {behind.describe()}"
        )
        reason = (
            f"kick {kick.kind} {kick.params or ''}: {why}; kick {kicks.trial(trial_id).used}"
            f"/{kicks.config.max_kicks}; sweep stats helped/tried: {kicks.describe_stats()}"
        )
        kick = type(kick)(kick.kind, kick.params, kick.duration_steps, reason)
        return DecisionKind.KICK, reason, {"id": command_id, "type": "kick", "kick": kick.to_dict()}

    def _decide(self, trial_id: str, t: PhaseDetector, phase: Phase) -> tuple[DecisionKind, str]:
        c = self.config
        if phase is Phase.DIVERGED:
            return DecisionKind.STOP, f"diverged: {t.changes[-1].reason}"
        if phase is Phase.GROKKED:
            reason = f"grokked at step {t.grokked_step:.0f}: {c.metric} reached {c.grok_threshold}"
            if c.stop_on_grok:
                return DecisionKind.STOP, reason
            return DecisionKind.CONTINUE, reason
        if t.step >= c.max_t:
            return self._at_budget(trial_id, t, phase)
        if phase is Phase.PLATEAU:
            quiet, patience = self.quiet_steps(trial_id, t), self.patience(t)
            hopeless = self._hopeless(trial_id)
            if hopeless is not None:
                return DecisionKind.STOP, (
                    f"never-grok: {hopeless.describe()}; P(grok) < stop_below {self.stop_below:g} "
                    f"at {self._memorization_ratio(trial_id):.1f}× memorization "
                    f"(memorization at {t.memorized_step or 0:.0f}); "
                    f"{self._describe(t)}"
                )
            if quiet >= patience:
                promising = self._promising(trial_id)
                if promising is not None:
                    return DecisionKind.CONTINUE, (
                        f"kept past patience: {promising.describe()} ≥ keep_above "
                        f"{c.keep_above:g}; quiet {quiet:.0f} steps ≥ patience {patience:.0f}; "
                        f"{self._describe(t)}"
                    )
                return DecisionKind.STOP, (
                    f"never-grok: no transition evidence for {quiet:.0f} steps ≥ patience "
                    f"{patience:.0f} ({self._patience_basis(t)}); {self._describe(t, trial_id)}"
                )
            return DecisionKind.CONTINUE, (
                f"plateau since step {t.memorized_step:.0f}, quiet {quiet:.0f}/{patience:.0f} "
                f"steps; {self._describe(t, trial_id)}"
            )
        if phase is Phase.TRANSITION:
            return DecisionKind.CONTINUE, f"transition: {self._describe(t, trial_id)}"
        if phase is Phase.MEMORIZING:
            return DecisionKind.CONTINUE, "memorizing: training set not yet fit"
        return DecisionKind.CONTINUE, f"warmup: {t.results}/{t.config.warmup_results} results"

    def _at_budget(self, trial_id: str, t: PhaseDetector, phase: Phase) -> tuple[DecisionKind, str]:
        c = self.config
        limit = c.max_t + c.extension
        alive = phase is Phase.TRANSITION or (
            phase is Phase.PLATEAU and t.fired and t.steps_since_evidence() == 0
        )
        if alive and self._hopeless(trial_id) is not None:
            alive = False  # the same P(grok) that stops a plateau does not pay past max_t
        promising = self._promising(trial_id)
        due = None
        if promising is not None and promising.eta_steps is not None:
            due = t.step + promising.eta_steps
        predicted = phase is Phase.PLATEAU and due is not None and due <= limit
        if (alive or predicted) and t.step < limit:
            why = (
                f"{phase.value} is under way" if alive else f"it is predicted to grok by {due:.0f}"
            )
            return DecisionKind.EXTEND, (
                f"past max_t {c.max_t:.0f} while {why} "
                f"(extension {t.step - c.max_t:.0f}/{c.extension:.0f}); "
                f"{self._describe(t, trial_id)}"
            )
        where = "extension" if alive or predicted else f"max_t {c.max_t:.0f}"
        return DecisionKind.STOP, (
            f"budget: reached {where} in {phase.value}; {self._describe(t, trial_id)}"
        )

    def _patience_basis(self, t: PhaseDetector) -> str:
        c = self.config
        basis = f"{c.patience_factor:g}× memorization at {t.memorized_step or 0:.0f}"
        basis += f", min {c.patience_floor:.0f}"
        return basis + (", halved: softmax collapse" if t.collapsed else "")

    def _describe(self, t: PhaseDetector, trial_id: str | None = None) -> str:
        prediction = None if trial_id is None else self.prediction(trial_id)
        prefix = "" if prediction is None else prediction.describe() + "; "
        return prefix + self._describe_signals(t)

    @staticmethod
    def _describe_signals(t: PhaseDetector) -> str:
        s = t.signals
        parts = [f"progress {s.get('progress', 0.0):.0%}"]
        parts += [
            f"{label} {s[key]:+.1%}"
            for key, label in (("val_loss_change", "val_loss"), ("weight_norm_change", "|w|"))
            if key in s and s.get("window_steps", 0) > 0
        ]
        if "zero_loss_share" in s:
            parts.append(f"zero-loss share {s['zero_loss_share']:.0%}")
        parts.append("evidence: " + (", ".join(t.fired) if t.fired else "none"))
        return ", ".join(parts)

    def _score(self, t: PhaseDetector, prediction: Prediction | None = None) -> float:
        """P(grok) from the predictor on a plateau or in transition; otherwise (no predictor, or
        before memorization) a heuristic grok score in [0, 1], not a calibrated probability."""
        if t.phase is Phase.GROKKED:
            return 1.0
        if t.phase in (Phase.STALLED, Phase.DIVERGED):
            return 0.0
        if prediction is not None and t.phase in (Phase.PLATEAU, Phase.TRANSITION):
            return float(prediction.p_grok)
        if t.phase is Phase.TRANSITION:
            return 0.5 + 0.5 * t.progress()
        if t.phase is Phase.PLATEAU:
            freshness = min(1.0, max(0.0, 1.0 - t.steps_since_evidence() / self.patience(t)))
            return round(0.1 + 0.3 * freshness + 0.05 * len(t.fired), 3)
        return 0.5

    def _remember(self, trial_id: str, decision: Decision) -> None:
        """Log every decision whose kind or phase differs from the previous one, and every one
        that carries a command (a KICK right after another is a new kick)."""
        previous = self.last_decision.get(trial_id)
        self.last_decision[trial_id] = decision
        changed = previous is None or (previous.kind, previous.phase) != (
            decision.kind,
            decision.phase,
        )
        if changed or decision.command is not None:
            self.log.setdefault(trial_id, []).append(decision)
