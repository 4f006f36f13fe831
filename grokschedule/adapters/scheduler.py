"""GrokScheduler: a Ray Tune ``TrialScheduler`` that keeps paying for runs that will grok.

A thin adapter: it turns each Tune result into an ``Observation``, asks ``GrokPolicy`` for a
decision and maps that decision back to Tune. All the reasoning lives in ``grokschedule``.

Kicks reach a trainable in one of two ways. One that polls the control channel (it reports
``control/acked_id``) gets each KICK/ROLLBACK posted to it and applies it between steps. One that
does not gets it PBT-style (``_Restarts``): the kick becomes a config change
(``grokschedule.core.commands.config_change`` by default), and at the next result that carries a
checkpoint the trial is paused and resumed from that checkpoint under the new config. A kick
with a ``duration_steps`` window is undone the same way once the window has passed (restart with
the old values), so it means the same on both paths; a ROLLBACK restarts with the pre-kick
values, but the weights go on from the latest checkpoint (Tune resumes from that one, not from
the one before the kick). A kick with no config equivalent (Grokfast, ⊥Grad, ...) is skipped with
the reason in the decision, and the kick policy does not choose that kind for the trial again.
The scheduler then writes the acknowledgements the trainable cannot (``control/acked_id``,
``control/applied_step``), so the kick policy reads both paths alike.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ray.tune.experiment import Trial
from ray.tune.result import DONE, SHOULD_CHECKPOINT
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from grokschedule.adapters.control_channel import ControlChannel
from grokschedule.adapters.restart import restart_with_config
from grokschedule.core.commands import config_change
from grokschedule.core.contract import ACKED_ID as ACK_KEY
from grokschedule.core.contract import APPLIED_STEP as APPLIED_KEY
from grokschedule.core.contract import CONTROL_WEIGHT_DECAY as WEIGHT_DECAY_KEY
from grokschedule.core.contract import MetricNames, Observation
from grokschedule.core.kick_policy import KickConfig
from grokschedule.core.kicks import Kick
from grokschedule.core.policy import Decision, DecisionKind, GrokPolicy, PolicyConfig
from grokschedule.core.summary import SweepSummary, TrialOutcome

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController

logger = logging.getLogger(__name__)

# What a kick becomes in a trial's config: (kick, config) -> changed keys, ValueError if none.
ConfigChange = Callable[[Kick, Mapping[str, Any]], dict[str, Any]]


@dataclass
class _Restart:
    """A config change waiting for a result that carries a checkpoint."""

    change: dict[str, Any]
    label: str  # how the log names it: "kick 3 (lr_multiply)", "rollback 4"
    command_id: int | None = None  # acknowledged once applied; None for a window's end
    undo: dict[str, Any] = field(default_factory=dict)  # the values a kick replaces
    window: int | None = None  # a kick's duration_steps: undone this long after it applied
    ends: _Restart | None = None  # the kick a window's end or a rollback undoes
    until: float | None = None  # a kick in force: the step from which its window is over


@dataclass
class _Restarts:
    """One non-polling trial's kicks by restart: what waits, what is in force, what to ack."""

    pending: _Restart | None = None
    in_force: list[_Restart] = field(default_factory=list)  # kicks applied, not undone yet
    acks: dict[str, float] = field(default_factory=dict)


class MissingMetricError(ValueError):
    """A metric the scheduler was configured to read is absent from a trial's results."""


class GrokScheduler(FIFOScheduler):
    """Grokking-aware early stopping for Ray Tune.

    Args:
        metric: The target metric (e.g. ``"val_acc"``); may also come from ``TuneConfig``.
        mode: ``"max"`` or ``"min"``; may also come from ``TuneConfig``.
        time_attr: Monotone progress attribute reported by the trainable (e.g. ``"step"``).
        max_t: The budget per trial, in ``time_attr`` units.
        grok_threshold: Target value that counts as generalized.
        max_extension: Extra ``time_attr`` a trial mid-transition may run past ``max_t``
            (default ``max_t / 2``). The trainable must be able to run that long.
        patience_factor: Plateau patience in multiples of the trial's own memorization time.
        min_patience: Floor for that patience (default ``max_t / 4``).
        stop_on_grok: Stop a trial once it reached ``grok_threshold``.
        train_loss, train_acc, val_loss, weight_norm: Names of the contract metrics; set one to
            ``None`` if the trainable does not report it. Extra ``grok/*`` metrics are used when
            present.
        phase_options: Overrides for ``grokschedule.core.phases.PhaseConfig``.
        interventions: Kick runs on quiet plateaus: ``True`` for the defaults, a list of kick
            kinds, or a mapping of ``grokschedule.core.kick_policy.KickConfig`` fields.
        predictor: The calibrated ``GrokPredictor`` behind P(grok) and ETA: ``True`` for the
            shipped coefficients, a path to a predictor JSON, ``False`` for the hand rules alone.
        stop_below: P(grok) under which a plateau past ``judge_after`` × memorization is stopped
            (default: the value recommended in the predictor file).
        keep_above: P(grok) at or above which patience does not stop a plateau.
        judge_after: Multiples of memorization time before P(grok) may stop a run.
        kick_config_change: For trainables that do not poll the control channel, what a kick
            becomes in the trial's config (``grokschedule.core.commands.config_change`` by
            default: ``lr``, ``weight_decay``, ``batch_size``, ``optimizer``, ``momentum``;
            ``grokschedule.adapters.trainables.modular.kick_config_change`` for the built-in
            trainable).
    """

    def __init__(
        self,
        metric: str | None = None,
        mode: str | None = None,
        time_attr: str = "step",
        max_t: float = 20_000,
        grok_threshold: float = 0.95,
        max_extension: float | None = None,
        patience_factor: float = 10.0,
        min_patience: float | None = None,
        stop_on_grok: bool = True,
        train_loss: str | None = "train_loss",
        train_acc: str | None = "train_acc",
        val_loss: str | None = "val_loss",
        weight_norm: str | None = "weight_norm",
        phase_options: Mapping[str, Any] | None = None,
        interventions: bool | list[str] | Mapping[str, Any] | None = None,
        predictor: bool | str = True,
        stop_below: float | None = None,
        keep_above: float = 0.5,
        judge_after: float = 2.0,
        kick_config_change: ConfigChange = config_change,
    ) -> None:
        super().__init__()
        if mode is not None and mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if not time_attr:
            raise ValueError("time_attr must be a non-empty metric name")
        self._time_attr = time_attr
        self._contract = {
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss,
            "weight_norm": weight_norm,
        }
        self._policy_args: dict[str, Any] = {
            "max_t": max_t,
            "grok_threshold": grok_threshold,
            "max_extension": max_extension,
            "patience_factor": patience_factor,
            "min_patience": min_patience,
            "stop_on_grok": stop_on_grok,
            "phases": dict(phase_options or {}),
            "interventions": KickConfig.from_user(interventions),
            "predictor": predictor,
            "stop_below": stop_below,
            "keep_above": keep_above,
            "judge_after": judge_after,
        }
        self._metric, self._mode = metric, mode
        # Validate every argument now, before any trial runs; metric/mode may still come later.
        PolicyConfig(metric=metric or "target", mode=mode or "max", **self._policy_args)
        self.policy: GrokPolicy | None = None
        if metric is not None and mode is not None:
            self.policy = GrokPolicy(PolicyConfig(metric=metric, mode=mode, **self._policy_args))
        self._checked: set[str] = set()
        self._steps: dict[str, float] = {}
        self._errors: dict[str, str] = {}
        self._channel = ControlChannel() if self._policy_args["interventions"] else None
        self._kick_config_change = kick_config_change
        self._restarts: dict[str, _Restarts] = {}  # trials that do not poll the channel

    # -- Tune wiring -------------------------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        """Take metric/mode from ``TuneConfig`` unless given here (then a second one conflicts)."""
        if (self._metric and metric) or (self._mode and mode):
            return False
        self._metric = self._metric or metric
        self._mode = self._mode or mode
        if self._metric is None or self._mode is None:
            raise ValueError("GrokScheduler needs metric and mode (here or in tune.TuneConfig)")
        if self.policy is None:
            config = PolicyConfig(metric=self._metric, mode=self._mode, **self._policy_args)
            self.policy = GrokPolicy(config)
        return True

    @property
    def time_attr(self) -> str:
        return self._time_attr

    @property
    def required_metrics(self) -> list[str]:
        return self._names.required

    @property
    def _names(self) -> MetricNames:
        return MetricNames(self._time_attr, self._metric or "", **self._contract)

    def on_trial_result(
        self, tune_controller: TuneController, trial: Trial, result: dict[str, Any]
    ) -> str:
        policy = self._require_policy()
        trial_id = trial.trial_id
        if trial_id not in self._checked:
            self._check_contract(trial_id, result)
        obs = Observation.from_result(result, self._names, self._known_control(trial, result))
        if obs.step <= self._steps.get(trial_id, -math.inf):
            # A trial resumed from an older checkpoint (a failure, Tuner.restore) repeats steps
            # the tracker has seen; its windows and patience would count them twice.
            return self.CONTINUE
        self._steps[trial_id] = obs.step
        decision = policy.observe(trial_id, obs)
        if decision.command is not None:
            self._deliver(trial, decision, result)
        if decision.kind is DecisionKind.STOP:
            return TrialScheduler.STOP
        restarts = self._restarts.get(trial_id)
        if restarts is not None:
            return self._restart_if_due(tune_controller, trial, restarts, result, obs.step)
        return self.CONTINUE

    def on_trial_complete(
        self, tune_controller: TuneController, trial: Trial, result: dict[str, Any]
    ) -> None:
        if self._channel is not None:
            self._channel.discard(trial.trial_id)

    def on_trial_remove(self, tune_controller: TuneController, trial: Trial) -> None:
        if self._channel is not None:
            self._channel.discard(trial.trial_id)

    def on_trial_error(self, tune_controller: TuneController, trial: Trial) -> None:
        self._errors[trial.trial_id] = str(trial.error_file or "trial raised an error")
        if self.policy is not None:
            self.policy.tracker(trial.trial_id)  # failed before its first result: still listed

    def on_trial_add(self, tune_controller: TuneController, trial: Trial) -> None:
        # Tune retries a failed trial (FailureConfig) by on_trial_error then on_trial_add of the
        # trial, PENDING again: the error was not final, and it must not count as errored.
        if trial.status != Trial.ERROR:
            self._errors.pop(trial.trial_id, None)

    def debug_string(self) -> str:
        if self.policy is None:
            return "GrokScheduler: waiting for metric/mode."
        summary = self.summary()
        counts = ", ".join(f"{n} {phase}" for phase, n in sorted(summary.phase_counts().items()))
        return (
            f"GrokScheduler({self._metric} {self._mode} {self.policy.config.grok_threshold}, "
            f"max_t={self.policy.config.max_t:g}): {len(summary.trials)} trials [{counts}]; "
            f"{summary.steps_used:,.0f} steps used of {summary.steps_budget:,.0f} at max_t."
        )

    # -- reading decisions (console, MLflow, summary) ------------------------------------------
    def last_decision(self, trial_id: str) -> Decision | None:
        return None if self.policy is None else self.policy.last_decision.get(trial_id)

    def decision_log(self, trial_id: str) -> list[Decision]:
        return [] if self.policy is None else list(self.policy.log.get(trial_id, []))

    def summary(self) -> SweepSummary:
        policy = self._require_policy()
        outcomes = [
            TrialOutcome.from_tracker(
                trial_id,
                tracker,
                policy.last_decision.get(trial_id),
                policy.log.get(trial_id, []),
                self._steps.get(trial_id, 0.0),
                error=self._errors.get(trial_id),
            )
            for trial_id, tracker in policy.trackers.items()
        ]
        return SweepSummary(outcomes, max_t=policy.config.max_t, metric=self._metric or "")

    # -- state: Tuner.restore does not call save/restore, GrokStateCallback carries it ------------
    def get_state(self) -> dict[str, Any]:
        return {
            "metric": self._metric,
            "mode": self._mode,
            "policy": self.policy,
            "checked": set(self._checked),
            "steps": dict(self._steps),
            "errors": dict(self._errors),
            "restarts": copy.deepcopy(self._restarts),
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        self._metric, self._mode = state["metric"], state["mode"]
        self.policy = state["policy"]
        self._checked = set(state["checked"])
        self._steps = dict(state["steps"])
        self._errors = dict(state["errors"])
        self._restarts = dict(state.get("restarts", {}))

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))

    # -- internals ---------------------------------------------------------------------------
    def _deliver(self, trial: Trial, decision: Decision, result: Mapping[str, Any]) -> None:
        """Send a KICK/ROLLBACK through the live channel, or turn it into a restart for a
        trainable that does not poll the channel (no ``control/acked_id`` in its results)."""
        assert self._channel is not None and decision.command is not None
        trial_id = trial.trial_id
        if ACK_KEY in result and trial_id not in self._restarts:
            self._channel.post(trial_id, decision.command)
            self._annotate(trial_id, decision)  # the live path is the default: no note
            return
        restarts = self._restarts.setdefault(trial_id, _Restarts())
        command = decision.command
        if command["type"] == "rollback":
            kicked = restarts.in_force[-1] if restarts.in_force else None
            if kicked is not None:  # the policy rolls back the last kick applied
                rollback = f"rollback {command['id']} of {kicked.label}"
                restarts.pending = _Restart(dict(kicked.undo), rollback, command["id"], ends=kicked)
                note = f"applied by restart with config {kicked.undo}"
            else:  # its window already ended: the pre-kick values are back
                restarts.acks = {ACK_KEY: command["id"], APPLIED_KEY: decision.step}
                note = "nothing to restart: the kick's window already ended"
            self._annotate(
                trial_id,
                decision,
                f"{note} (the trainable does not poll the control channel: the weights go on "
                "from its latest checkpoint)",
            )
            return
        kick = Kick.from_dict(command["kick"])
        try:
            change = self._kick_config_change(kick, trial.config)
        except ValueError as error:
            policy = self._require_policy()
            assert policy.kicks is not None  # a KICK comes only from a policy with kicks
            policy.kicks.not_applied(trial_id, command["id"])
            self._annotate(trial_id, decision, f"not applied: {error}")
            return
        undo = {key: trial.config.get(key) for key in change}
        label = f"kick {command['id']} ({kick.kind})"
        restarts.pending = _Restart(change, label, command["id"], undo, kick.duration_steps)
        note = f"applied by restart with config {change}"
        note += " now" if result.get(SHOULD_CHECKPOINT) else " at the next result with a checkpoint"
        if kick.duration_steps is not None:
            note += f", undone by restart after {kick.duration_steps} steps"
        self._annotate(trial_id, decision, note)

    def _restart_if_due(
        self,
        tune_controller: TuneController,
        trial: Trial,
        restarts: _Restarts,
        result: Mapping[str, Any],
        step: float,
    ) -> str:
        """PAUSE the trial to resume it under its pending config change, once a result carries
        the checkpoint to resume from; until then the change waits. A kick's window ends the
        same way, with a restart under the values it replaced."""
        if restarts.pending is None:
            over = [k for k in restarts.in_force if k.until is not None and step >= k.until]
            if over:
                label = f"end of the {over[0].label} window"
                restarts.pending = _Restart(dict(over[0].undo), label, ends=over[0])
        pending = restarts.pending
        if pending is None or not result.get(SHOULD_CHECKPOINT) or result.get(DONE):
            return self.CONTINUE
        decision = restart_with_config(
            tune_controller, trial, result, {**trial.config, **pending.change}
        )
        restarts.pending = None
        if pending.command_id is not None:
            restarts.acks = {ACK_KEY: pending.command_id, APPLIED_KEY: step}
        if pending.ends is not None:
            restarts.in_force = [k for k in restarts.in_force if k is not pending.ends]
        else:
            pending.until = None if pending.window is None else step + pending.window
            restarts.in_force.append(pending)
        logger.info(
            "GrokScheduler: trial %s step %.0f: %s: restart with config %s from this checkpoint",
            trial.trial_id,
            step,
            pending.label,
            pending.change,
        )
        return decision

    def _annotate(self, trial_id: str, decision: Decision, note: str = "") -> None:
        """Say how a KICK/ROLLBACK was carried out in the decision the console and MLflow show
        (the policy logged it: it carries a command)."""
        policy = self._require_policy()
        reason = f"{decision.reason}; {note}" if note else decision.reason
        annotated = dataclasses.replace(decision, reason=reason)
        if policy.last_decision.get(trial_id) is decision:
            policy.last_decision[trial_id] = annotated
        log = policy.log.get(trial_id, [])
        if log and log[-1] is decision:
            log[-1] = annotated
        logger.info("GrokScheduler: trial %s: %s", trial_id, annotated.reason)

    def _known_control(self, trial: Trial, result: Mapping[str, Any]) -> dict[str, float]:
        """``control/*`` values the trainable does not report: the acknowledgements of kicks by
        restart, and the trial's weight decay from its config (the kick policy skips a
        weight-decay kick at 0)."""
        known: dict[str, float] = {}
        restarts = self._restarts.get(trial.trial_id)
        if restarts is not None and ACK_KEY not in result:
            known.update(restarts.acks)
        weight_decay = trial.config.get("weight_decay")
        if WEIGHT_DECAY_KEY not in result and isinstance(weight_decay, int | float):
            known[WEIGHT_DECAY_KEY] = float(weight_decay)
        return known

    def _require_policy(self) -> GrokPolicy:
        if self.policy is None:
            raise ValueError("GrokScheduler needs metric and mode (here or in tune.TuneConfig)")
        return self.policy

    def _check_contract(self, trial_id: str, result: Mapping[str, Any]) -> None:
        missing = [name for name in self.required_metrics if name not in result]
        if missing:
            reported = sorted(k for k in result if not k.startswith(("config/", "time_")))
            raise MissingMetricError(
                f"GrokScheduler: trial {trial_id} did not report {missing}. It reported "
                f"{reported}. Report these metrics from the trainable, or pass the name that "
                f"it uses (e.g. val_loss='eval_loss'), or None to tell the scheduler it is absent."
            )
        self._checked.add(trial_id)
