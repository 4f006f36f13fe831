"""MLflow logging for a grokking-aware sweep, on top of Ray's ``MLflowLoggerCallback``.

Ray's callback already creates one run per trial and logs its params; this subclass adds what
it lacks: metrics logged against the trial's own step (not Tune's iteration counter) in one
batch per result instead of one request per key, the scheduler's phase and decisions as tags,
and the decision log as a JSON artifact at the end of the trial.
"""

from __future__ import annotations

import math
import time
from typing import Any

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.experiment import Trial
from ray.tune.utils import flatten_dict

from tune_plugins.scheduler import GrokScheduler


def numeric_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The loggable scalars of a Tune result (no config echo, strings or non-finite values)."""
    flat = flatten_dict(result, delimiter="/")
    return {
        key: float(value)
        for key, value in flat.items()
        if isinstance(value, int | float)
        and not isinstance(value, bool)
        and not key.startswith("config/")
        and math.isfinite(value)
    }


class GrokMLflowLoggerCallback(MLflowLoggerCallback):
    def __init__(self, scheduler: GrokScheduler, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scheduler = scheduler
        self._client: MlflowClient | None = None
        self._tagged: dict[str, tuple[str, str]] = {}

    def setup(self, *args: Any, **kwargs: Any) -> None:
        super().setup(*args, **kwargs)
        self._client = MlflowClient(self.tracking_uri)

    def log_trial_result(self, iteration: int, trial: Trial, result: dict[str, Any]) -> None:
        assert self._client is not None
        run_id = self._trial_runs[trial]
        step = int(result.get(self.scheduler.time_attr, result.get("training_iteration", 0)))
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in numeric_metrics(result).items()]
        self._client.log_batch(run_id, metrics=metrics)
        decision = self.scheduler.last_decision(trial.trial_id)
        if decision is not None:
            key = (decision.phase.value, decision.reason)
            if self._tagged.get(trial.trial_id) != key:
                self._tagged[trial.trial_id] = key
                self._client.set_tag(run_id, "grok.phase", decision.phase.value)
                self._client.set_tag(
                    run_id,
                    "grok.last_decision",
                    f"{decision.kind.value} @ {decision.step:.0f}: {decision.reason}"[:5000],
                )

    def log_trial_end(self, trial: Trial, failed: bool = False) -> None:
        assert self._client is not None
        run_id = self._trial_runs[trial]
        log = self.scheduler.decision_log(trial.trial_id)
        last = self.scheduler.last_decision(trial.trial_id)
        if last is not None:
            self._client.set_tag(run_id, "grok.final_phase", last.phase.value)
            self._client.set_tag(run_id, "grok.verdict", f"{last.kind.value}: {last.reason}"[:5000])
        self._client.log_dict(run_id, [d.to_dict() for d in log], "grok/decisions.json")
        super().log_trial_end(trial, failed)
