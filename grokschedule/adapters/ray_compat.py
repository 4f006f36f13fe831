"""Every Ray API grokschedule uses that Ray does not promise to keep, in one place.

Ray moves private modules (``ray._private``, ``*._internal``, ``ray.autoscaler._private``) between
minor releases without notice. The rest of grokschedule imports them from here, by the names
below, so a Ray upgrade is checked in one file: ``tests/test_ray_compat.py`` imports each symbol
this module takes from Ray and fails with its name and the installed Ray version. Each item says
what it is for and the Ray version it was read against (``CHECKED_ON``). Test-only helpers (Ray's
own config validators) are imported when called, so the runtime path does not load them; so is
everything from ``ray.train`` (the Train V2 names load on first use, see ``__getattr__``).
"""

from __future__ import annotations

import importlib
import json
from typing import TYPE_CHECKING, Any

from ray._common.constants import HEAD_NODE_RESOURCE_NAME as _HEAD_NODE_RESOURCE_NAME
from ray._private import ray_constants as _ray_constants
from ray._private import services as _services
from ray._private import state as _state
from ray._private.internal_api import memory_summary as _memory_summary
from ray.autoscaler._private.util import format_readonly_node_type as _format_readonly_node_type
from ray.experimental.internal_kv import _internal_kv_get

CHECKED_ON = "2.60.0"
"""The Ray release every item below was read against (pyproject allows the next minor too)."""

# -- cluster discovery (grokschedule sweep) -----------------------------------------------------


def bootstrap_address(address: str | None) -> str | None:
    """The ``host:port`` of the cluster ``ray.init(address)`` would join, or None when it would
    start a local one: ``RAY_ADDRESS``, then the cluster ``ray start`` last started on this
    machine, ``"local"`` forcing None. ``ray._private.services.canonicalize_bootstrap_address``
    (checked on Ray 2.60.0)."""
    joined: str | None = _services.canonicalize_bootstrap_address(address)
    return joined


def autoscaler_node_types() -> tuple[dict[str, float], ...]:
    """The node shapes an autoscaler v2 (KubeRay) says it can add, each a resource mapping; empty
    without one. ``ray._private.state.state.get_cluster_config()`` and its ``ClusterConfig``
    protobuf's ``node_group_configs[].resources``, as Ray Data reads them (checked on Ray 2.60.0).
    Needs ``ray.init`` first."""
    config = _state.state.get_cluster_config()
    if not config:
        return ()
    return tuple(dict(group.resources) for group in config.node_group_configs)


def autoscaler_node_type_mapping() -> dict[str, str]:
    """Node id -> node type name, from the status an autoscaler v1 (``ray up``) publishes in the
    GCS key-value store under ``ray_constants.DEBUG_AUTOSCALING_STATUS`` (its
    ``autoscaler_report.node_type_mapping``, read with ``ray.experimental.internal_kv.
    _internal_kv_get``); empty without one (checked on Ray 2.60.0). Needs ``ray.init`` first."""
    status = _internal_kv_get(_ray_constants.DEBUG_AUTOSCALING_STATUS)
    report = (json.loads(status).get("autoscaler_report") or {}) if status else {}
    return dict(report.get("node_type_mapping") or {})


def readonly_node_type(node_id: str) -> str:
    """The anonymous node type name an autoscaler v1 gives a node it did not launch (a "readonly"
    node, e.g. one ``ray start`` added by hand): ``ray.autoscaler._private.util.
    format_readonly_node_type`` (checked on Ray 2.60.0)."""
    name: str = _format_readonly_node_type(node_id)
    return name


# -- Train V2 inside a Tune trial (adapters.trainables.deepspeed, train_guard, reaper) ----------

HEAD_NODE_RESOURCE_NAME: str = _HEAD_NODE_RESOURCE_NAME
"""The custom resource only the head node has; asking for 0.001 of it pins an actor there.
``ray._common.constants`` (checked on Ray 2.60.0)."""

if TYPE_CHECKING:  # loaded on first use instead, by ``__getattr__`` from ``_FROM_RAY_TRAIN``
    # str: the environment variable Train V2's controller reads for how long a worker group may
    # take to be placed and started before it counts as a failure (Ray's default: 60 s).
    from ray.train.v2._internal.constants import WORKER_GROUP_START_TIMEOUT_S_ENV_VAR

    # Base classes of Train V2 callbacks: ControllerCallback's run in the controller
    # (``after_controller_start``, ``before_controller_shutdown``); WorkerGroupCallback's are told
    # about each worker group (``after_worker_group_start``, whose
    # ``get_worker_group_state().placement_group_handle`` holds the group's placement group).
    from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback

    # The type ``ControllerCallback.after_controller_start`` receives; for annotations.
    from ray.train.v2._internal.execution.context import TrainRunContext

    # The type ``WorkerGroupCallback.after_worker_group_start`` receives; for annotations.
    from ray.train.v2._internal.execution.worker_group import WorkerGroup

# The names above -> their modules (checked on Ray 2.60.0).
_FROM_RAY_TRAIN = {
    "WORKER_GROUP_START_TIMEOUT_S_ENV_VAR": "ray.train.v2._internal.constants",
    "ControllerCallback": "ray.train.v2._internal.execution.callback",
    "WorkerGroupCallback": "ray.train.v2._internal.execution.callback",
    "TrainRunContext": "ray.train.v2._internal.execution.context",
    "WorkerGroup": "ray.train.v2._internal.execution.worker_group",
}


def __getattr__(name: str) -> Any:
    """The names taken from ``ray.train``, imported on first use (PEP 562): importing
    ``ray.train`` loads Ray Data and pandas (~1 s), which the run reaper — a process per trial
    that needs only ``actor_state`` — would otherwise pay at every trial's start."""
    if name not in _FROM_RAY_TRAIN:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_FROM_RAY_TRAIN[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def get_trial_state(key: str) -> Any:
    """A value kept under ``key`` in the running Tune trial's session; None if unset or outside
    a trial: how a function trainable's mixin finds what the function stored.
    ``ray.train._internal.session.get_session().get_state`` — Ray 2.60.0 still runs Tune function
    trainables in the Train v1 session object (checked on Ray 2.60.0)."""
    from ray.train._internal.session import get_session

    session = get_session()
    return None if session is None else session.get_state(key)


def set_trial_state(key: str, value: Any) -> None:
    """Keep ``value`` under ``key`` in the running Tune trial's session, for ``get_trial_state``.
    ``ray.train._internal.session.get_session().set_state`` (checked on Ray 2.60.0)."""
    from ray.train._internal.session import get_session

    session = get_session()
    if session is None:
        raise RuntimeError("no Tune trial session here: call set_trial_state inside a Tune trial")
    session.set_state(key, value)


def actor_state(actor_id: str) -> str | None:
    """An actor's state in the GCS actor table ("ALIVE", "RESTARTING", "DEAD", ...), or None if
    the GCS does not know it. Answers without the dashboard, unlike ``ray.util.state``.
    ``ray._private.state.actors(actor_id=...)`` (checked on Ray 2.60.0)."""
    entry = _state.actors(actor_id=actor_id)
    return entry.get("State") if entry else None


# -- benchmarks (bench.soak) --------------------------------------------------------------------


def object_store_stats(gcs_address: str) -> str:
    """The raylets' object store summary as ``ray memory --stats-only`` prints it (plasma bytes
    and object counts). ``ray._private.internal_api.memory_summary(stats_only=True)`` (checked on
    Ray 2.60.0)."""
    summary: str = _memory_summary(address=gcs_address, stats_only=True)
    return summary


# -- test-only: Ray's own cluster-config validators (tests/test_cluster_configs.py) ------------


def validate_cluster_config(config: dict[str, Any]) -> None:
    """Raise as ``ray up`` does on a cluster config that breaks Ray's schema or rules.
    ``ray.autoscaler._private.util.validate_config`` (checked on Ray 2.60.0)."""
    from ray.autoscaler._private.util import validate_config

    validate_config(config)


def prepare_cluster_config(config: dict[str, Any]) -> dict[str, Any]:
    """A cluster config with the defaults ``ray up`` fills in (head/worker node types, resources).
    ``ray.autoscaler._private.util.prepare_config`` (checked on Ray 2.60.0)."""
    from ray.autoscaler._private.util import prepare_config

    prepared: dict[str, Any] = prepare_config(config)
    return prepared


def kuberay_autoscaling_config(ray_cluster: dict[str, Any]) -> dict[str, Any]:
    """The autoscaling config KubeRay's autoscaler derives from a ``RayCluster`` custom resource
    (node types, resources, min/max workers). ``ray.autoscaler._private.kuberay.
    autoscaling_config._derive_autoscaling_config_from_ray_cr`` (checked on Ray 2.60.0)."""
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr,
    )

    derived: dict[str, Any] = _derive_autoscaling_config_from_ray_cr(ray_cluster)
    return derived


__all__ = [
    "CHECKED_ON",
    "HEAD_NODE_RESOURCE_NAME",
    "WORKER_GROUP_START_TIMEOUT_S_ENV_VAR",
    "ControllerCallback",
    "TrainRunContext",
    "WorkerGroup",
    "WorkerGroupCallback",
    "actor_state",
    "autoscaler_node_type_mapping",
    "autoscaler_node_types",
    "bootstrap_address",
    "get_trial_state",
    "kuberay_autoscaling_config",
    "object_store_stats",
    "prepare_cluster_config",
    "readonly_node_type",
    "set_trial_state",
    "validate_cluster_config",
]
