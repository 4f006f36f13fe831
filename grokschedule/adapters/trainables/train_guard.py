"""Free a Train V2 run's workers when its Tune trial is stopped or paused (Ray #54305).

What Ray 2.60 does (read from ``ray/train/v2`` and ``ray/tune/trainable/function_trainable.py``):
Tune stops a function trainable by calling ``Trainable.stop`` on its actor, which only sets the
session's ``stop_event`` and does not wait for the thread running the function; the actor then
exits, and the ``TrainController`` it owns dies with it (fate-sharing). Nothing aborts the
controller, so its worker group's placement group — created by the controller, scoped to the
*job* — stays reserved. Ray's own ``PlacementGroupCleaner`` is meant to remove it, but it polls
the controller through the state API, which needs the dashboard; without one it logs "Failed to
query Ray Train Controller actor state" every second forever and removes nothing. The next trial's
worker group then waits for CPUs/GPUs that never come back, times out after 60 s, and the
controller retries without end (``FailureConfig.controller_failure_limit`` defaults to -1).

What this module adds:

1. ``AbortTrainRunOnStop``, a mixin for the Tune function (Ray's ``__mixins__`` hook of
   ``wrap_function``), makes ``Trainable.cleanup`` — stop, pause, or the end of the trial —
   synchronous: before the trial actor may exit, the run's placement groups are removed (the
   workers and their CPUs/GPUs are freed at once) and the controller is asked to ``abort``
   (Ray's graceful path, which also stops Ray's cleaner), bounded by ``ABORT_TIMEOUT_S``.
2. ``RunReaper`` (in ``reaper.py``), a small detached actor per run, which removes every
   placement group the run registered as soon as the controller is dead however it died
   (killed with its owner, crashed), polling the GCS actor table directly (no dashboard
   needed), then exits. It covers what the mixin cannot: a trial actor that is killed rather
   than stopped.

Retries are bounded separately by ``FailureConfig(controller_failure_limit=...)`` (see tune.py).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from grokschedule.adapters.ray_compat import (
    HEAD_NODE_RESOURCE_NAME,
    ControllerCallback,
    WorkerGroupCallback,
    get_trial_state,
    set_trial_state,
)
from grokschedule.adapters.trainables.reaper import ABORT_TIMEOUT_S, RunReaper

if TYPE_CHECKING:
    from grokschedule.adapters.ray_compat import TrainRunContext, WorkerGroup

REAPER_KEY = "grokschedule_run_reaper"


class ReleaseOnStop(ControllerCallback, WorkerGroupCallback):
    """Train callback (runs in the controller) that tells the reaper about the controller and
    every worker group's placement group. Pass it in ``ray.train.RunConfig(callbacks=[...])``."""

    def __init__(self, reaper: Any) -> None:
        self._reaper = reaper

    def after_controller_start(self, train_run_context: TrainRunContext) -> None:
        context = ray.get_runtime_context()
        ray.get(self._reaper.attach.remote(context.current_actor, context.get_actor_id()))

    def after_worker_group_start(self, worker_group: WorkerGroup) -> None:
        state = worker_group.get_worker_group_state()
        ray.get(self._reaper.register.remote(state.placement_group_handle.placement_group))

    async def before_controller_shutdown(self) -> None:
        await self._reaper.release.remote()


def start_reaper() -> Any:
    """A reaper for the Train run about to start from this Tune trial actor."""
    owner_id = ray.get_runtime_context().get_actor_id()
    cls = ray.remote(num_cpus=0, max_concurrency=4)(RunReaper)
    # On the head node, like Ray's own cleaner: it must survive the loss of the nodes whose
    # placement groups it frees; "DEFAULT" keeps it out of the trial's placement group.
    return cls.options(
        lifetime="detached",
        resources={HEAD_NODE_RESOURCE_NAME: 0.001},
        scheduling_strategy="DEFAULT",
    ).remote(owner_id)


class AbortTrainRunOnStop:
    """Mixin for a Tune function trainable that runs ``TorchTrainer.fit()``: its ``cleanup``
    (Tune's stop and pause both end in it) tears the Train run down before the actor exits.
    Set ``fn.__mixins__ = (AbortTrainRunOnStop,)`` and ``register_reaper`` the run's reaper."""

    def cleanup(self) -> None:
        reaper = get_trial_state(REAPER_KEY)
        if reaper is not None:
            with contextlib.suppress(RayActorError, GetTimeoutError):
                ray.get(reaper.abort.remote(), timeout=ABORT_TIMEOUT_S)
        super().cleanup()  # type: ignore[misc]


def register_reaper(reaper: Any) -> None:
    """Make ``reaper`` the one this trial actor's ``AbortTrainRunOnStop.cleanup`` uses."""
    set_trial_state(REAPER_KEY, reaper)
