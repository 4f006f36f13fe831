"""GrokPolicy: turn each observation of a trial into a decision with a reason and its evidence.

The rules, in order of precedence:

1. diverged (non-finite, or train loss back at chance
   and staying there; never a slingshot that recovers)     → STOP
2. target reached (grokked)                                 → STOP, or CONTINUE if configured
3. with interventions: a kick that diverged or made training
   worse without recovering                                 → ROLLBACK
4. past ``max_t``: transition under way or fresh evidence,
   or (with interventions) a kick still awaiting its
   verdict, and still inside ``max_t + max_extension``      → EXTEND (keep paying)
   otherwise                                                → STOP (budget)
5. with interventions: plateau quiet for ``kick_at`` × the
   patience, or (with the predictor) past ``judge_after`` ×
   memorization and not predicted to grok by ``max_t``,
   and kicks left                                           → KICK
6. plateau with no transition evidence for longer than the
   patience — ``patience_factor`` × the trial's own
   memorization time, at least ``min_patience`` steps       → STOP (never-grok)
7. otherwise                                                → CONTINUE

A never-grok STOP (rule 6, or P(grok) below ``stop_below``) is withheld — CONTINUE, cause
``kept`` — while a trial's probe-set signals (``grok/probe/<set>/*``, a language model's held-out
and harder sets) show progress: exact-match rising, or the confidence on correct answers rising
while the probe loss falls (``ProbeWatch``). Their values join the decision's signals. A trial
that reports none is decided exactly as without this rule.

Patience is measured from the last *evidence* of a coming transition (validation loss falling,
weight norm decaying, probability on the correct class rising, target rising), so a run that
keeps showing signs of life is never stopped on its plateau.

With the calibrated ``GrokPredictor`` (``PolicyConfig(predictor=True)``, the default), rules 4
and 6 also read P(grok) and its ETA, computed from a bounded per-trial history:

* a plateau at ≥ ``judge_after`` × its memorization time whose P(grok) is *confidently* under
  ``stop_below`` — the top of its interval, ``p_high``, two predictions in a row — is stopped
  at once (never-grok), and a run under that bar (plateau or transition) is not EXTENDed at
  ``max_t`` — unless interventions are on: such a run is kicked instead, and once it has been
  kicked only the patience rule, counted from its last kick, stops it (the predictor was
  fitted on runs nobody kicked, and a kick changes the curve it reads); a run no kick touched
  before ``max_t`` is judged at ``max_t`` as without interventions. A predictor far
  outside the data it was fitted on has a wide interval, so it stops less;
* a plateau whose patience ran out but whose P(grok) ≥ ``keep_above`` is kept (the hand
  patience rule alone stops slow grokkers on the quiet stretch before their turn);
* at ``max_t``, a run with P(grok) ≥ ``keep_above`` whose ETA lands inside the extension is
  EXTENDed even before its target has started to move.

The predictor's validation accuracy is the target when the target is an accuracy. When it is
not (``val_loss``, a perplexity: what a language-model fine-tune often reports), the held-out
probe set's exact-match (``grok/probe/val/exact_match``, its latest value) stands in for it:
the share of whole answers right on held-out examples is the accuracy the predictor was fitted
on, where otherwise its ``missing:val_acc`` flag would replace every accuracy feature.

With ``adaptive=True`` the predictor learns from the sweep itself: each trial that
grokked or ran its whole budget gives its first judged prediction and its outcome to a
``SweepAdaptivePredictor`` whose prior is the shipped coefficients.

``Decision.signals`` then carries ``p_grok``, ``p_high`` and ``eta_steps``, ``Decision.score``
is P(grok), and the reasons quote them with the features that weighed most.

Each trial's detector, predictor history, prediction and decision log live in one
``TrialState``. Adapters read them (``last_decision``, ``decision_log``, ``trial``) and record
how they carried out a command with ``note``; they never write the state themselves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

from grokschedule.core.commands import KICK, ROLLBACK, Command
from grokschedule.core.contract import SIGNAL_PREFIX, Observation
from grokschedule.core.decision import Cause, Decision, DecisionKind
from grokschedule.core.kick_policy import KickConfig, KickPolicy
from grokschedule.core.phases import Phase, PhaseConfig, PhaseDetector
from grokschedule.core.predictor import (
    GrokHistory,
    GrokPredictor,
    Prediction,
    SweepAdaptivePredictor,
)
from grokschedule.core.probe_watch import ProbeWatch


def _is_accuracy(metric: str) -> bool:
    return "acc" in metric.lower()


@dataclass(frozen=True, kw_only=True)
class PolicyConfig:
    """The scheduler's knobs; validated here so bad arguments fail before any trial runs."""

    metric: str = "val_acc"
    mode: str = "max"
    grok_threshold: float = 0.95
    max_t: float = 20_000
    max_extension: float | None = None  # default: max_t / 2
    patience_factor: float = 20.0
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
    judge_after: float = 4.0  # × memorization time before P(grok) may stop a run
    # Learn from the sweep: refit the predictor on the trials that grokked or ran their whole
    # budget, the shipped coefficients being the prior (SweepAdaptivePredictor). Off by default:
    # it saves compute but made decisions depend on the order trials finish in, and through
    # Tune it lost two late grokkers the fixed predictor keeps (BENCHMARKS.md).
    adaptive: bool = False

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
        if not isinstance(self.adaptive, bool):
            raise ValueError(f"adaptive must be True or False, got {self.adaptive!r}")
        PhaseConfig(grok_threshold=self.grok_threshold, mode=self.mode, **self.phases)

    @property
    def extension(self) -> float:
        return self.max_t / 2 if self.max_extension is None else self.max_extension

    @property
    def patience_floor(self) -> float:
        return self.max_t / 4 if self.min_patience is None else self.min_patience


# GrokScheduler's arguments for the policy but metric and mode, by its names; the trainer
# callbacks take the same. All but two are PolicyConfig's fields: see ``config_arguments``.
USER_ARGUMENTS = (
    "max_t",
    "grok_threshold",
    "max_extension",
    "patience_factor",
    "min_patience",
    "stop_on_grok",
    "phase_options",
    "interventions",
    "predictor",
    "stop_below",
    "keep_above",
    "judge_after",
    "adaptive",
)


def config_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """PolicyConfig's keyword arguments but metric and mode, from the ``USER_ARGUMENTS`` in
    ``arguments`` (others are left out): ``phase_options`` becomes ``phases`` and
    ``interventions`` the ``KickConfig`` it stands for (``KickConfig.from_user``). One builder,
    so GrokScheduler and the trainer callbacks turn the same arguments into the same policy."""
    config = {key: arguments[key] for key in USER_ARGUMENTS}
    config["phases"] = dict(config.pop("phase_options") or {})
    config["interventions"] = KickConfig.from_user(config["interventions"])
    return config


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


@dataclass
class TrialState:
    """Everything the policy holds for one trial."""

    detector: PhaseDetector
    history: GrokHistory | None = None  # the predictor's bounded input, from the first record
    prediction: Prediction | None = None  # the latest P(grok) and ETA
    low_streak: int = 0  # consecutive predictions confidently under stop_below
    judged: Prediction | None = None  # the first prediction at judge_after × memorization
    outcome_known: bool = False  # its outcome was given to the sweep-adaptive predictor
    last: Decision | None = None  # the latest decision
    log: list[Decision] = field(default_factory=list)  # the decisions worth showing: _remember
    probes: ProbeWatch = field(default_factory=ProbeWatch)  # the probe-set signals, if any


@dataclass(frozen=True)
class _Ruling:
    """What a rule decided, before ``observe`` adds the step, phase, score and signals."""

    kind: DecisionKind
    cause: Cause
    reason: str
    command: Command | None = None


class GrokPolicy:
    """Decides on every observation; holds one ``TrialState`` per trial and, with
    interventions, the sweep-wide kick statistics (``kicks``)."""

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self.kicks = KickPolicy(config.interventions) if config.interventions else None
        prior = load_predictor(config.predictor)
        self.predictor: GrokPredictor | None = (
            SweepAdaptivePredictor(prior) if prior is not None and config.adaptive else prior
        )
        recommended = self.predictor.recommended_stop_below if self.predictor else 0.0
        self.stop_below: float = (
            min(recommended, config.keep_above / 2)
            if config.stop_below is None
            else config.stop_below
        )
        self._phase_config = PhaseConfig(
            grok_threshold=config.grok_threshold, mode=config.mode, **config.phases
        )
        self._trials: dict[str, TrialState] = {}

    # -- trials ---------------------------------------------------------------------------------
    def add(self, trial_id: str) -> TrialState:
        """The trial's state, made on its first call: ``observe`` adds a trial at its first
        result; an adapter adds one that failed before it, so the summary still lists it."""
        state = self._trials.get(trial_id)
        if state is None:
            state = self._trials[trial_id] = TrialState(PhaseDetector(self._phase_config))
        return state

    def trial(self, trial_id: str) -> TrialState:
        """What the policy holds for a known trial (read it; ``observe`` and ``note`` change
        it). ``KeyError`` for a trial it has not seen."""
        state = self._trials.get(trial_id)
        if state is None:
            raise KeyError(f"GrokPolicy has no trial {trial_id!r}")
        return state

    def trial_ids(self) -> list[str]:
        return list(self._trials)

    def last_decision(self, trial_id: str) -> Decision | None:
        state = self._trials.get(trial_id)
        return None if state is None else state.last

    def decision_log(self, trial_id: str) -> list[Decision]:
        """The trial's decisions worth showing (each change of kind or phase, each command)."""
        state = self._trials.get(trial_id)
        return [] if state is None else list(state.log)

    def note(self, trial_id: str, decision: Decision, note: str) -> Decision:
        """Record how the trial's latest decision was carried out (a restart, a skipped kick):
        it is replaced, in ``last_decision`` and in the log, by one whose reason ends with
        ``; {note}``, which is returned."""
        state = self.trial(trial_id)
        if state.last is not decision:
            raise ValueError(f"trial {trial_id}: only its latest decision can take a note")
        noted = replace(decision, reason=f"{decision.reason}; {note}")
        state.last = noted
        if state.log and state.log[-1] is decision:
            state.log[-1] = noted
        return noted

    def forget(self, trial_id: str) -> None:
        """Drop everything held for a trial (a long sweep's finished one, once reported)."""
        self._trials.pop(trial_id, None)

    # -- deciding -------------------------------------------------------------------------------
    def observe(self, trial_id: str, obs: Observation) -> Decision:
        state = self.add(trial_id)
        detector = state.detector
        phase = detector.update(obs)
        state.probes.update(obs)
        self._record(state, obs)
        if self.kicks is not None:
            self.kicks.absorb(trial_id, obs.control, self._train(obs), obs.step, obs.weight_norm)
        ruling = self._intervene(trial_id, state, phase, obs)
        if ruling is None:
            ruling = self._decide(trial_id, state, detector.phase)
        self._learn(state, ruling)
        if ruling.kind is DecisionKind.STOP and detector.phase in (
            Phase.PLATEAU,
            Phase.TRANSITION,
            Phase.MEMORIZING,
        ):
            detector.mark_stalled(ruling.reason)
            if self.kicks is not None:
                self.kicks.fail_unjudged(trial_id)
        prediction = state.prediction
        signals = {k: round(v, 6) for k, v in detector.signals.items()}
        if prediction is not None:
            signals["p_grok"] = float(prediction.p_grok)
            signals["p_high"] = float(prediction.p_high)
            if prediction.eta_steps is not None and not detector.phase.terminal:
                signals["eta_steps"] = round(float(prediction.eta_steps), 1)  # none once over
        signals.update(state.probes.signals())
        decision = Decision(
            kind=ruling.kind,
            cause=ruling.cause,
            reason=ruling.reason,
            step=obs.step,
            phase=detector.phase,
            score=self._score(detector, prediction),
            signals=signals,
            command=ruling.command,
        )
        self._remember(state, decision)
        return decision

    def patience(self, detector: PhaseDetector) -> float:
        memorized = detector.memorized_step or 0.0
        patience = max(self.config.patience_factor * memorized, self.config.patience_floor)
        # Softmax collapse (arXiv 2501.04697) is a never-grok marker: halve the patience.
        return patience / 2 if detector.collapsed else patience

    def quiet_steps(self, trial_id: str, detector: PhaseDetector) -> float:
        """Steps since the last transition evidence — or since the last kick took effect."""
        quiet = detector.steps_since_evidence()
        if self.kicks is not None:
            kicked = self.kicks.trial(trial_id).last_kick_step
            if kicked is not None and math.isfinite(kicked):
                quiet = min(quiet, detector.step - kicked)
        return quiet

    # -- the predictor --------------------------------------------------------------------------
    def _record(self, state: TrialState, obs: Observation) -> None:
        """Feed the trial's bounded history and refresh its prediction when it is due."""
        predictor, d = self.predictor, state.detector
        if predictor is None:
            return
        if d.phase.terminal:
            if d.phase is not Phase.GROKKED:
                state.prediction = None
            return
        history = state.history
        if history is None:
            dc = d.config
            history = state.history = GrokHistory(
                predictor.capacity, dc.memorized_acc, dc.memorized_loss
            )
        if not math.isfinite(obs.step) or obs.step <= history.step:
            return  # a repeated or older step (a resumed trial): nothing new to learn
        c = self.config
        target_is_accuracy = _is_accuracy(c.metric) and c.mode == "max"
        val_acc = obs.target if target_is_accuracy else state.probes.held_out_exact_match()
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
        if d.phase not in (Phase.PLATEAU, Phase.TRANSITION) or history.memorized_step is None:
            return
        last = state.prediction
        if last is None or last.step is None or obs.step >= last.step * (1 + PREDICT_EVERY):
            state.prediction = predictor.predict(history)
            low = state.prediction.confidently_below(self.stop_below)
            state.low_streak = state.low_streak + 1 if low else 0
            if state.judged is None and self._memorization_ratio(d) >= self.config.judge_after:
                state.judged = state.prediction

    def _learn(self, state: TrialState, ruling: _Ruling) -> None:
        """Give the sweep-adaptive predictor an outcome that was observed, not caused: the
        trial grokked, or ran its whole budget without grokking. A run stopped on a low P(grok)
        or on patience has no outcome: counting it would teach the predictor its own stops."""
        if not isinstance(self.predictor, SweepAdaptivePredictor) or state.outcome_known:
            return
        if state.judged is None:
            return
        grokked = state.detector.phase is Phase.GROKKED
        if grokked or ruling.cause is Cause.BUDGET:
            state.outcome_known = True
            self.predictor.observe_outcome(state.judged, grokked)

    @staticmethod
    def _memorization_ratio(d: PhaseDetector) -> float:
        """Step over the memorization step as the detector saw it (the patience's basis too)."""
        return d.step / d.memorized_step if d.memorized_step else 0.0

    def _hopeless(self, trial_id: str, state: TrialState) -> Prediction | None:
        """The prediction, when it says to stop this plateau now. With interventions, only for a
        trial no kick has touched once none can reach it (past ``max_t``): before, a kick comes
        first; after one, its curve is not one the predictor was fitted on."""
        prediction = state.prediction
        if prediction is None:
            return None
        if self.kicks is not None and (
            state.detector.step < self.config.max_t or self.kicks.trial(trial_id).used
        ):
            return None
        if (  # two predictions in a row, so one noisy reading does not kill a run
            state.low_streak >= 2
            and self._memorization_ratio(state.detector) >= self.config.judge_after
        ):
            return prediction
        return None

    def _behind_schedule(self, state: TrialState) -> Prediction | None:
        """The prediction, when a plateau past ``judge_after`` × memorization is not expected to
        grok by ``max_t``: such a run is worth a kick even while it shows weak evidence, which
        keeps the quiet-plateau rule from ever firing."""
        prediction, d = state.prediction, state.detector
        if prediction is None or self._memorization_ratio(d) < self.config.judge_after:
            return None
        eta = prediction.eta_steps
        on_time = eta is not None and d.step + eta <= self.config.max_t
        if prediction.p_grok >= self.config.keep_above and on_time:
            return None
        return prediction

    def _promising(self, state: TrialState) -> Prediction | None:
        prediction = state.prediction
        if prediction is None or prediction.p_grok < self.config.keep_above:
            return None
        return prediction

    # -- rules ----------------------------------------------------------------------------------
    @staticmethod
    def _train(obs: Observation) -> tuple[float, float]:
        loss = math.nan if obs.train_loss is None else obs.train_loss
        acc = math.nan if obs.train_acc is None else obs.train_acc
        return loss, acc

    def _intervene(
        self, trial_id: str, state: TrialState, phase: Phase, obs: Observation
    ) -> _Ruling | None:
        """Rollback and kick decisions; ``None`` leaves the decision to the plain rules."""
        kicks, d = self.kicks, state.detector
        if kicks is None:
            return None
        train = self._train(obs)
        kicks.credit(trial_id, d.last_evidence_step, phase is Phase.GROKKED, obs.step)
        harm = kicks.harm(trial_id, obs.step, train, diverged=phase is Phase.DIVERGED)
        if harm:
            command_id = kicks.order_rollback(trial_id)
            if phase is Phase.DIVERGED:
                d.resume_plateau(f"rolled back: {harm}")
            return _Ruling(
                DecisionKind.ROLLBACK,
                Cause.ROLLBACK,
                f"rollback: {harm}",
                Command(command_id, ROLLBACK),
            )
        if phase is not Phase.PLATEAU or d.step >= self.config.max_t:
            return None
        quiet, patience = self.quiet_steps(trial_id, d), self.patience(d)
        behind = self._behind_schedule(state)
        if quiet < kicks.config.kick_at * patience and behind is None:
            return None
        chosen = kicks.choose(trial_id, obs.step, train, plateau_age=quiet)
        if chosen is None:
            return None
        command_id, kick = chosen
        why = (
            f"plateau quiet {quiet:.0f} steps ≥ {kicks.config.kick_at:g}× patience {patience:.0f}"
            if behind is None
            else f"not predicted to grok by max_t {self.config.max_t:.0f}: {behind.describe()}"
        )
        reason = (
            f"kick {kick.kind} {kick.params or ''}: {why}; kick {kicks.trial(trial_id).used}"
            f"/{kicks.config.max_kicks} ({kicks.trial(trial_id).why}); sweep stats "
            f"helped/tried: {kicks.describe_stats()}"
        )
        kick = type(kick)(kick.kind, kick.params, kick.duration_steps, reason)
        return _Ruling(DecisionKind.KICK, Cause.KICK, reason, Command(command_id, KICK, kick))

    def _decide(self, trial_id: str, state: TrialState, phase: Phase) -> _Ruling:
        c, d = self.config, state.detector
        if phase is Phase.DIVERGED:
            return _Ruling(DecisionKind.STOP, Cause.DIVERGED, f"diverged: {d.changes[-1].reason}")
        if phase is Phase.GROKKED:
            reason = f"grokked at step {d.grokked_step:.0f}: {c.metric} reached {c.grok_threshold}"
            kind = DecisionKind.STOP if c.stop_on_grok else DecisionKind.CONTINUE
            return _Ruling(kind, Cause.GROKKED, reason)
        if d.step >= c.max_t:
            return self._at_budget(trial_id, state, phase)
        if phase is Phase.PLATEAU:
            return self._withhold_on_probes(state, self._plateau(trial_id, state))
        if phase is Phase.TRANSITION:
            return _Ruling(
                DecisionKind.CONTINUE, Cause.CONTINUE, f"transition: {self._describe(state)}"
            )
        if phase is Phase.MEMORIZING:
            return _Ruling(
                DecisionKind.CONTINUE, Cause.CONTINUE, "memorizing: training set not yet fit"
            )
        return _Ruling(
            DecisionKind.CONTINUE,
            Cause.CONTINUE,
            f"warmup: {d.results}/{d.config.warmup_results} results",
        )

    @staticmethod
    def _withhold_on_probes(state: TrialState, ruling: _Ruling) -> _Ruling:
        """A never-grok STOP becomes CONTINUE (kept) while the probe sets show progress."""
        if ruling.cause is not Cause.NEVER_GROK or not state.probes.present:
            return ruling
        progress = state.probes.progress()
        if not progress:
            return ruling
        return _Ruling(
            DecisionKind.CONTINUE,
            Cause.KEPT,
            f"kept past patience: held-out probe signals show progress ({'; '.join(progress)}; "
            f"{state.probes.describe()}); withheld {ruling.reason}",
        )

    def _plateau(self, trial_id: str, state: TrialState) -> _Ruling:
        c, d = self.config, state.detector
        quiet, patience = self.quiet_steps(trial_id, d), self.patience(d)
        hopeless = self._hopeless(trial_id, state)
        if hopeless is not None:
            return _Ruling(
                DecisionKind.STOP,
                Cause.NEVER_GROK,
                f"never-grok: {hopeless.describe()}; P(grok) < stop_below {self.stop_below:g} "
                f"at {self._memorization_ratio(d):.1f}× memorization "
                f"(memorization at {d.memorized_step or 0:.0f}); "
                f"{self._describe_signals(d)}",
            )
        if quiet >= patience:
            promising = self._promising(state)
            if promising is not None:
                return _Ruling(
                    DecisionKind.CONTINUE,
                    Cause.KEPT,
                    f"kept past patience: {promising.describe()} ≥ keep_above "
                    f"{c.keep_above:g}; quiet {quiet:.0f} steps ≥ patience {patience:.0f}; "
                    f"{self._describe_signals(d)}",
                )
            return _Ruling(
                DecisionKind.STOP,
                Cause.NEVER_GROK,
                f"never-grok: no transition evidence for {quiet:.0f} steps ≥ patience "
                f"{patience:.0f} ({self._patience_basis(d)}); {self._describe(state)}",
            )
        return _Ruling(
            DecisionKind.CONTINUE,
            Cause.CONTINUE,
            f"plateau since step {d.memorized_step:.0f}, quiet {quiet:.0f}/{patience:.0f} "
            f"steps; {self._describe(state)}",
        )

    def _at_budget(self, trial_id: str, state: TrialState, phase: Phase) -> _Ruling:
        c, d = self.config, state.detector
        limit = c.max_t + c.extension
        alive = phase is Phase.TRANSITION or (
            phase is Phase.PLATEAU and d.fired and d.steps_since_evidence() == 0
        )
        if alive and phase is Phase.PLATEAU and self._hopeless(trial_id, state) is not None:
            # The P(grok) that stops a plateau does not pay for one past max_t; a transition
            # under way (the target moving) is the grok itself, and no prediction vetoes it.
            alive = False
        promising = self._promising(state)
        due = None
        if promising is not None and promising.eta_steps is not None:
            due = d.step + promising.eta_steps
        predicted = phase is Phase.PLATEAU and due is not None and due <= limit
        # A kick posted shortly before max_t gets the window the kick policy judges it in
        # (evidence after it, or ``verdict_after`` steps without): stopping it at max_t would
        # pay for the kick and never read its effect.
        awaiting = self._kick_awaiting_verdict(trial_id) if phase is Phase.PLATEAU else None
        if (alive or predicted or awaiting) and d.step < limit:
            why = (
                f"{phase.value} is under way"
                if alive
                else f"it is predicted to grok by {due:.0f}"
                if predicted
                else awaiting
            )
            return _Ruling(
                DecisionKind.EXTEND,
                Cause.EXTENDED,
                f"past max_t {c.max_t:.0f} while {why} "
                f"(extension {d.step - c.max_t:.0f}/{c.extension:.0f}); {self._describe(state)}",
            )
        if alive or predicted or awaiting:
            where = f"the end of the extension (max_t {c.max_t:.0f} + {c.extension:.0f})"
        elif d.step > c.max_t:  # extended once; what paid for it is gone
            where = (
                f"max_t {c.max_t:.0f} + {d.step - c.max_t:.0f} steps of extension, with nothing "
                "under way or predicted to pay for more,"
            )
        else:
            where = f"max_t {c.max_t:.0f}"
        return _Ruling(
            DecisionKind.STOP,
            Cause.BUDGET,
            f"budget: reached {where} in {phase.value}; {self._describe(state)}",
        )

    def _kick_awaiting_verdict(self, trial_id: str) -> str | None:
        """Why the trial's last kick still pays for its run, or None: it has its verdict."""
        if self.kicks is None or (acting := self.kicks.awaiting_verdict(trial_id)) is None:
            return None
        kick, applied_step = acting
        after = self.kicks.config.verdict_after
        by = (
            ""
            if after is None
            else f", or {after:.0f} steps without it, by {applied_step + after:.0f}"
        )
        return f"its {kick.kind} kick at {applied_step:.0f} awaits its verdict (evidence{by})"

    def _patience_basis(self, d: PhaseDetector) -> str:
        c = self.config
        basis = f"{c.patience_factor:g}× memorization at {d.memorized_step or 0:.0f}"
        basis += f", min {c.patience_floor:.0f}"
        return basis + (", halved: softmax collapse" if d.collapsed else "")

    def _describe(self, state: TrialState) -> str:
        """The trial's P(grok) (when predicted) and signals, for a reason."""
        prediction = state.prediction
        prefix = "" if prediction is None else prediction.describe() + "; "
        probes = f"; {state.probes.describe()}" if state.probes.present else ""
        return prefix + self._describe_signals(state.detector) + probes

    @staticmethod
    def _describe_signals(d: PhaseDetector) -> str:
        s = d.signals
        parts = [f"progress {s.get('progress', 0.0):.0%}"]
        parts += [
            f"{label} {s[key]:+.1%}"
            for key, label in (("val_loss_change", "val_loss"), ("weight_norm_change", "|w|"))
            if key in s and s.get("window_steps", 0) > 0
        ]
        if "zero_loss_share" in s:
            parts.append(f"zero-loss share {s['zero_loss_share']:.0%}")
        parts.append("evidence: " + (", ".join(d.fired) if d.fired else "none"))
        return ", ".join(parts)

    def _score(self, d: PhaseDetector, prediction: Prediction | None = None) -> float:
        """P(grok) from the predictor on a plateau or in transition; otherwise (no predictor, or
        before memorization) a heuristic grok score in [0, 1], not a calibrated probability."""
        if d.phase is Phase.GROKKED:
            return 1.0
        if d.phase in (Phase.STALLED, Phase.DIVERGED):
            return 0.0
        if prediction is not None and d.phase in (Phase.PLATEAU, Phase.TRANSITION):
            return float(prediction.p_grok)
        if d.phase is Phase.TRANSITION:
            return 0.5 + 0.5 * d.progress()
        if d.phase is Phase.PLATEAU:
            freshness = min(1.0, max(0.0, 1.0 - d.steps_since_evidence() / self.patience(d)))
            return round(0.1 + 0.3 * freshness + 0.05 * len(d.fired), 3)
        return 0.5

    @staticmethod
    def _remember(state: TrialState, decision: Decision) -> None:
        """Log every decision whose kind or phase differs from the previous one, and every one
        that carries a command (a KICK right after another is a new kick)."""
        previous, state.last = state.last, decision
        changed = previous is None or (previous.kind, previous.phase) != (
            decision.kind,
            decision.phase,
        )
        if changed or decision.command is not None:
            state.log.append(decision)
