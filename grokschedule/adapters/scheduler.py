"""GrokScheduler: a Ray Tune ``TrialScheduler`` that keeps paying for runs that will grok.

A thin adapter: it turns each Tune result into an ``Observation``, asks ``GrokPolicy`` for a
decision and maps that decision back to Tune. All the reasoning lives in ``grokschedule.core``.
A KICK or ROLLBACK reaches a trainable that polls the control channel (its results carry
``control/acked_id``) through that channel, and any other by restart under a changed config
(``grokschedule.adapters.restart``).
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from grokschedule.adapters.control_channel import CONTROL_KEY, ControlChannel
from grokschedule.adapters.restart import ConfigChange, RestartFallback
from grokschedule.core.commands import LORA_RANK_KEY, config_change
from grokschedule.core.contract import (
    ACKED_ID,
    CONTROL_LORA_RANK,
    CONTROL_WEIGHT_DECAY,
    MetricNames,
    Observation,
)
from grokschedule.core.decision import Decision, DecisionKind
from grokschedule.core.policy import GrokPolicy, PolicyConfig, config_arguments
from grokschedule.core.summary import SweepSummary, TrialOutcome

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController

logger = logging.getLogger(__name__)


class MissingMetricError(ValueError):
    """A metric the scheduler was configured to read is absent from a trial's results."""


class GrokScheduler(FIFOScheduler):
    """Grokking-aware early stopping for Ray Tune.

    Everything after ``mode`` is keyword-only.

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
        phase_options: Overrides for ``grokschedule.core.phases.PhaseConfig``, e.g.
            ``{"chance_loss": math.log(num_classes)}`` for the divergence rule.
        interventions: Kick runs on quiet plateaus: ``True`` for the defaults, a list of kick
            kinds, or a mapping of ``grokschedule.core.kick_policy.KickConfig`` fields.
        predictor: The calibrated ``GrokPredictor`` behind P(grok) and ETA: ``True`` for the
            shipped coefficients, a path to a predictor JSON, ``False`` for the hand rules alone.
        stop_below: A plateau past ``judge_after`` × memorization is stopped when the top of
            its P(grok) interval is under this (default: the value recommended in the
            predictor file).
        keep_above: P(grok) at or above which patience does not stop a plateau.
        judge_after: Multiples of memorization time before P(grok) may stop a run.
        adaptive: Refit the predictor during the sweep on its trials that grokked or ran their
            whole budget (the shipped coefficients are the prior).
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
        *,
        time_attr: str = "step",
        max_t: float = 20_000,
        grok_threshold: float = 0.95,
        max_extension: float | None = None,
        patience_factor: float = 20.0,
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
        judge_after: float = 4.0,
        adaptive: bool = False,
        kick_config_change: ConfigChange = config_change,
    ) -> None:
        super().__init__()
        if not time_attr:
            raise ValueError("time_attr must be a non-empty metric name")
        self._time_attr = time_attr
        self._contract = {
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss,
            "weight_norm": weight_norm,
        }
        # locals(): the arguments (the policy's are taken by name), as the trainer callbacks do.
        self._policy_args = config_arguments(locals())
        self._metric, self._mode = metric, mode
        # PolicyConfig validates the policy's arguments now, before any trial runs; metric and
        # mode may still come from TuneConfig (set_search_properties): stand-ins until then.
        config = PolicyConfig(
            metric="target" if metric is None else metric,
            mode="max" if mode is None else mode,
            **self._policy_args,
        )
        self.policy = GrokPolicy(config) if metric is not None and mode is not None else None
        self._checked: set[str] = set()
        self._steps: dict[str, float] = {}
        self._replaying: set[str] = set()  # trials repeating steps after a resume (logged once)
        self._errors: dict[str, str] = {}
        # Each trial's config as it started: kicks by restart rewrite trial.config, and the
        # summary names a trial by what the user ran.
        self._configs: dict[str, dict[str, Any]] = {}
        self._channel = ControlChannel() if self._policy_args["interventions"] else None
        self._restarts = RestartFallback(kick_config_change)  # trials that do not poll

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
        self._configs.setdefault(trial_id, dict(trial.config))
        if trial_id not in self._checked:
            self._check_contract(trial_id, result)
        obs = Observation.from_result(result, self._names, self._known_control(trial, result))
        last = self._steps.get(trial_id, -math.inf)
        if obs.step <= last:
            # A trial resumed from an older checkpoint (a failure, Tuner.restore) repeats steps
            # the policy has seen; its windows and patience would count them twice.
            if trial_id not in self._replaying:
                self._replaying.add(trial_id)
                logger.info(
                    "GrokScheduler: trial %s resumed at step %g, before its last result at "
                    "step %g; its results up to step %g are ignored (already seen)",
                    trial_id,
                    obs.step,
                    last,
                    last,
                )
            return self.CONTINUE
        self._replaying.discard(trial_id)
        self._steps[trial_id] = obs.step
        decision = policy.observe(trial_id, obs)
        if decision.command is not None:
            self._deliver(trial, decision, result)
        if decision.kind is DecisionKind.STOP:
            return TrialScheduler.STOP
        return self._restarts.restart_if_due(tune_controller, trial, result, obs.step)

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
            self.policy.add(trial.trial_id)  # failed before its first result: still listed

    def on_trial_add(self, tune_controller: TuneController, trial: Trial) -> None:
        self._configs.setdefault(trial.trial_id, dict(trial.config))
        # Tune retries a failed trial (FailureConfig) by on_trial_error then on_trial_add of the
        # trial, PENDING again: the error was not final, and it must not count as errored.
        if trial.status != Trial.ERROR:
            self._errors.pop(trial.trial_id, None)
        if self._channel is not None:  # the key its commands are signed with (control_channel)
            trial.config[CONTROL_KEY] = self._channel.key

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
        return None if self.policy is None else self.policy.last_decision(trial_id)

    def decision_log(self, trial_id: str) -> list[Decision]:
        return [] if self.policy is None else self.policy.decision_log(trial_id)

    def summary(self) -> SweepSummary:
        policy = self._require_policy()
        outcomes = [
            TrialOutcome.of(
                trial_id,
                policy.decision_log(trial_id),
                policy.last_decision(trial_id),
                self._steps.get(trial_id, 0.0),
                policy.config.max_t,
                error=self._errors.get(trial_id),
                config=self._configs.get(trial_id),
            )
            for trial_id in policy.trial_ids()
        ]
        return SweepSummary(outcomes, max_t=policy.config.max_t, metric=self._metric or "")

    # -- state: Tuner.restore does not call save/restore, GrokCallback carries it ---------------
    def get_state(self) -> dict[str, Any]:
        return {
            "metric": self._metric,
            "mode": self._mode,
            "policy": self.policy,
            "checked": set(self._checked),
            "steps": dict(self._steps),
            "errors": dict(self._errors),
            "configs": dict(self._configs),
            "restarts": self._restarts.get_state(),
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        self._metric, self._mode = state["metric"], state["mode"]
        self.policy = state["policy"]
        self._checked = set(state["checked"])
        self._steps = dict(state["steps"])
        self._errors = dict(state["errors"])
        self._configs = dict(state.get("configs", {}))  # absent from states saved before it
        self._restarts.set_state(state["restarts"])

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))

    # -- internals ---------------------------------------------------------------------------
    def _deliver(self, trial: Trial, decision: Decision, result: Mapping[str, Any]) -> None:
        """Send a KICK/ROLLBACK through the live channel, or by restart to a trainable that does
        not poll the channel (no ``control/acked_id`` in its results); how a restart carries it
        out (or why it cannot) is noted in the decision the console and MLflow show."""
        assert self._channel is not None and decision.command is not None
        policy, command, trial_id = self._require_policy(), decision.command, trial.trial_id
        if ACKED_ID in result and not self._restarts.covers(trial_id):
            self._channel.post(trial_id, command)
            logger.info("GrokScheduler: trial %s: %s", trial_id, decision.reason)
            return
        try:
            note = self._restarts.deliver(trial, command, decision.step, result)
        except ValueError as error:  # a kick with no config equivalent
            assert policy.kicks is not None  # a KICK comes only from a policy with kicks
            policy.kicks.not_applied(trial_id, command.id)
            note = f"not applied: {error}"
        noted = policy.note(trial_id, decision, note)
        logger.info("GrokScheduler: trial %s: %s", trial_id, noted.reason)

    def _known_control(self, trial: Trial, result: Mapping[str, Any]) -> dict[str, float]:
        """``control/*`` values the trainable does not report: the acknowledgements of kicks by
        restart, and the trial's weight decay and LoRA rank from its config (the kick policy
        skips a weight-decay kick at 0, and a lora_rank kick without an adapter)."""
        known = {} if ACKED_ID in result else self._restarts.acks(trial.trial_id)
        weight_decay = trial.config.get("weight_decay")
        if CONTROL_WEIGHT_DECAY not in result and isinstance(weight_decay, int | float):
            known[CONTROL_WEIGHT_DECAY] = float(weight_decay)
        rank = trial.config.get(LORA_RANK_KEY)
        if CONTROL_LORA_RANK not in result and isinstance(rank, int) and not isinstance(rank, bool):
            known[CONTROL_LORA_RANK] = float(rank)
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
