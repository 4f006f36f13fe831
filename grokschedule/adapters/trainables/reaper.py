"""``RunReaper``: the detached actor that frees a Train V2 run's placement groups once its
controller is gone, however it died (see ``train_guard``, which starts one per run).

A module of its own, importing only Ray's core and ``ray_compat.actor_state``: Ray starts a fresh
process for each trial's reaper and imports this module there, while the trial's other processes
start too; importing ``train_guard`` would load Ray Train (Ray Data, pandas: ~1 s) for a class
that only polls the GCS and removes placement groups.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

from grokschedule.adapters.ray_compat import actor_state

logger = logging.getLogger(__name__)
POLL_INTERVAL_S = 0.5
ABORT_TIMEOUT_S = 30.0


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
