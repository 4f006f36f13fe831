"""GrokScheduler: a Ray Tune ``TrialScheduler`` that keeps paying for runs that will grok.

A thin adapter: it turns each Tune result into an ``Observation``, asks ``GrokPolicy`` for a
decision and maps that decision back to Tune. All the reasoning lives in ``grokschedule``.
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from grokschedule.control import ControlChannel
from grokschedule.kick_policy import KickConfig
from grokschedule.phases import Observation
from grokschedule.policy import Decision, DecisionKind, GrokPolicy, PolicyConfig
from grokschedule.summary import SweepSummary, TrialOutcome

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController

logger = logging.getLogger(__name__)

SIGNAL_PREFIX = "grok/"
CONTROL_PREFIX = "control/"
ACK_KEY = "control/acked_id"


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
        tracker_options: Overrides for ``grokschedule.phases.TrackerConfig``.
        interventions: Kick runs on quiet plateaus: ``True`` for the defaults, a list of kick
            kinds, or a mapping of ``grokschedule.kick_policy.KickConfig`` fields.
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
        tracker_options: Mapping[str, Any] | None = None,
        interventions: bool | list[str] | Mapping[str, Any] | None = None,
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
            "tracker": dict(tracker_options or {}),
            "interventions": KickConfig.from_user(interventions),
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
        self._deaf: set[str] = set()  # trials that do not poll the control channel

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
        names = [self._time_attr, self._metric, *self._contract.values()]
        return [name for name in names if name]

    def on_trial_result(
        self, tune_controller: TuneController, trial: Trial, result: dict[str, Any]
    ) -> str:
        policy = self._require_policy()
        trial_id = trial.trial_id
        if trial_id not in self._checked:
            self._check_contract(trial_id, result)
        obs = self._observation(result)
        self._steps[trial_id] = obs.step
        decision = policy.observe(trial_id, obs)
        if decision.command is not None:
            self._deliver(trial_id, decision, result)
        return TrialScheduler.STOP if decision.kind is DecisionKind.STOP else self.CONTINUE

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
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        self._metric, self._mode = state["metric"], state["mode"]
        self.policy = state["policy"]
        self._checked = set(state["checked"])
        self._steps = dict(state["steps"])
        self._errors = dict(state["errors"])

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))

    # -- internals ---------------------------------------------------------------------------
    def _deliver(self, trial_id: str, decision: Decision, result: Mapping[str, Any]) -> None:
        """Send a KICK/ROLLBACK to the trainer through the live control channel."""
        assert self._channel is not None and decision.command is not None
        if ACK_KEY not in result:
            if trial_id not in self._deaf:
                self._deaf.add(trial_id)
                logger.warning(
                    "GrokScheduler: trial %s decided %s but does not poll the control channel "
                    "(no %r in its results); the command is dropped. For the built-in trainable "
                    "set config control=True; for your own, poll "
                    "grokschedule.control.ControlClient and report its acknowledgements.",
                    trial_id,
                    decision.kind.value,
                    ACK_KEY,
                )
            return
        self._channel.post(trial_id, decision.command)

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

    def _observation(self, result: Mapping[str, Any]) -> Observation:
        def read(name: str | None) -> float | None:
            if name is None or result.get(name) is None:
                return None
            return float(result[name])

        extras = {
            key: float(value)
            for key, value in result.items()
            if key.startswith(SIGNAL_PREFIX) and isinstance(value, int | float)
        }
        target = read(self._metric)
        control = {
            key: float(value)
            for key, value in result.items()
            if key.startswith(CONTROL_PREFIX) and isinstance(value, int | float)
        }
        return Observation(
            step=float(result[self._time_attr]),
            target=math.nan if target is None else target,
            train_loss=read(self._contract["train_loss"]),
            train_acc=read(self._contract["train_acc"]),
            val_loss=read(self._contract["val_loss"]),
            weight_norm=read(self._contract["weight_norm"]),
            extras=extras,
            control=control,
        )
