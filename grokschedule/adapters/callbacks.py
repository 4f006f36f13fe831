"""GrokCallback: carries GrokScheduler's state through Tune checkpoints and annotates results.

Tune (2.60) never calls ``TrialScheduler.save/restore`` on ``Tuner.restore`` (Ray issue
#30838): the scheduler comes back as it was pickled at the start. Callbacks, however, are
restored with ``get_state/set_state`` before trials are re-added, and the callback and the
scheduler are unpickled together from ``tuner.pkl``, so this callback still points at the
restored scheduler and can hand it its state back.

Tune calls the scheduler before callbacks for each result, so the decision for a result is
known here and is written into it (``scheduler/*`` keys) for the console, loggers and MLflow.
"""

from __future__ import annotations

from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from grokschedule.adapters.scheduler import GrokScheduler

ANNOTATION_PREFIX = "scheduler/"


class GrokCallback(Callback):
    """Pair with a GrokScheduler; list it first in ``RunConfig(callbacks=[...])``."""

    def __init__(self, scheduler: GrokScheduler) -> None:
        self.scheduler = scheduler

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        decision = self.scheduler.last_decision(trial.trial_id)
        if decision is None:
            return
        result.update(
            {
                f"{ANNOTATION_PREFIX}phase": decision.phase.value,
                f"{ANNOTATION_PREFIX}score": decision.score,
                f"{ANNOTATION_PREFIX}decision": decision.kind.value,
                f"{ANNOTATION_PREFIX}reason": decision.reason,
            }
        )

    def get_state(self) -> dict[str, Any] | None:
        return {"scheduler": self.scheduler.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.scheduler.set_state(state["scheduler"])
