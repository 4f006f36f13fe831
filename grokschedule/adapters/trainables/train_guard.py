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
2. ``RunReaper``, a small detached actor per run, which removes every placement group the run
   registered as soon as the controller is dead however it died (killed with its owner,
   crashed), polling the GCS actor table directly (no dashboard needed), then exits. It covers
   what the mixin cannot: a trial actor that is killed rather than stopped.

Retries are bounded separately by ``FailureConfig(controller_failure_limit=...)`` (see tune.py).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

from grokschedule.adapters.ray_compat import (
    HEAD_NODE_RESOURCE_NAME,
    ControllerCallback,
    WorkerGroupCallback,
    actor_state,
    get_trial_state,
    set_trial_state,
)

if TYPE_CHECKING:
    from grokschedule.adapters.ray_compat import TrainRunContext, WorkerGroup

logger = logging.getLogger(__name__)
POLL_INTERVAL_S = 0.5
ABORT_TIMEOUT_S = 30.0
REAPER_KEY = "grokschedule_run_reaper"


def _is_dead(actor_id: str) -> bool:
    """From the GCS actor table, which answers without the dashboard."""
    return actor_state(actor_id) in (None, "DEAD")


class RunReaper:
    """Watches one Train run's controller and frees its placement groups once it is gone.

    Detached, so it outlives the trial actor and the controller it watches; 0 CPUs; threaded, so
    ``register``/``abort`` arrive while the watch loop runs.
    """

    def __init__(self, owner_id: str) -> None:
        self._owner_id = owner_id  # the Tune trial actor: if it dies before a controller exists
        self._controller_id: str | None = None
        self._controller: Any = None  # a handle only until the controller shuts down by itself
        self._groups: list[PlacementGroup] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._watch, daemon=True, name="RunReaper").start()

    def attach(self, controller: Any, controller_id: str) -> None:
        with self._lock:
            self._controller, self._controller_id = controller, controller_id

    def release(self) -> None:
        """The controller is shutting down by itself: drop its handle, so our borrowed reference
        does not keep it alive; the watch loop still reaps if it dies half-way."""
        with self._lock:
            self._controller = None

    def register(self, group: PlacementGroup) -> None:
        with self._lock:
            self._groups.append(group)

    def abort(self) -> None:
        """The trial is being stopped: free the workers now, then abort the controller."""
        self._remove_groups()
        with self._lock:
            controller = self._controller
        if controller is None:
            return
        with contextlib.suppress(RayActorError, GetTimeoutError):
            # abort() ends with exit_actor, so a RayActorError is its normal answer.
            ray.get(controller.abort.remote(), timeout=ABORT_TIMEOUT_S)

    def _watch(self) -> None:
        while True:
            threading.Event().wait(POLL_INTERVAL_S)
            with self._lock:
                controller_id = self._controller_id
            watched = controller_id or self._owner_id
            if _is_dead(watched):
                break
        self._remove_groups()
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    def _remove_groups(self) -> None:
        with self._lock:
            groups = list(self._groups)
        for group in groups:
            if placement_group_table(group).get("state") not in (None, "REMOVED"):
                logger.warning("Removing placement group %s of a stopped Train run", group.id)
                with contextlib.suppress(Exception):  # removed concurrently by the controller
                    remove_placement_group(group)


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
