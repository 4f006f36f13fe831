"""Run a grokking-aware Tune sweep: scheduler, callbacks, MLflow and storage wired together.

Used by ``grokschedule demo`` and by tests; the same wiring a user writes in their own code.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from ray import tune
from ray.tune.execution.placement_groups import PlacementGroupFactory

from grokschedule.adapters import (
    GrokCallback,
    GrokConsoleReporter,
    GrokMLflowLoggerCallback,
    GrokScheduler,
)
from grokschedule.core.summary import SweepSummary


@dataclass
class SweepSettings:
    param_space: Mapping[str, Any]
    # GrokScheduler's keyword arguments; its metric and mode go to tune.TuneConfig instead, the
    # Tune convention, so ResultGrid.get_best_result() needs no arguments.
    scheduler: Mapping[str, Any]
    trainable: Callable[[dict[str, Any]], None]
    root: Path
    experiment: str = "grokschedule-demo"
    num_samples: int = 1
    max_concurrent_trials: int | None = None
    # Per trial: one bundle as a dict, or a placement group for trials spanning nodes.
    resources: Mapping[str, float] | PlacementGroupFactory = field(
        default_factory=lambda: {"cpu": 1}
    )
    tracking_uri: str | None = None  # default: sqlite store under root
    storage_path: str | None = None  # Tune's (a path, s3://, gs://); default root/ray_results
    console_interval_s: float = 20.0
    max_failures: int = 1


@dataclass
class SweepOutcome:
    results: tune.ResultGrid
    summary: SweepSummary
    names: dict[str, str]
    tracking_uri: str
    experiment_path: str


# Ray Train settings for a cluster this process starts on one machine: it has no node to be
# preempted, so the preemption watcher (an actor per Train run, importing Ray Train on a busy
# core) goes; the controller polls its workers every 0.5 s instead of 2 s, so each report (and
# the decision on it) is relayed sooner (BENCHMARKS.md "LM grokking on CPU": 1,010 → 876 s).
LOCAL_TRAIN_ENV = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}


def use_local_train_settings() -> None:
    """Put ``LOCAL_TRAIN_ENV`` in the environment before ``ray.init`` starts a local cluster,
    whose processes inherit it; a value already set wins. A joined cluster keeps its own."""
    for name, value in LOCAL_TRAIN_ENV.items():
        os.environ.setdefault(name, value)


def local_tracking_uri(root: Path) -> str:
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def ensure_experiment(tracking_uri: str, name: str, artifact_root: Path) -> None:
    """Create the MLflow experiment with artifacts next to the sqlite store, not in the cwd."""
    client = mlflow.MlflowClient(tracking_uri)
    if client.get_experiment_by_name(name) is None:
        client.create_experiment(name, artifact_location=artifact_root.resolve().as_uri())


def run_sweep(settings: SweepSettings) -> SweepOutcome:
    root = settings.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    tracking_uri = settings.tracking_uri or local_tracking_uri(root)
    if tracking_uri.startswith("sqlite:"):
        ensure_experiment(tracking_uri, settings.experiment, root / "mlartifacts")
    arguments = dict(settings.scheduler)
    metric, mode = arguments.pop("metric", None), arguments.pop("mode", None)
    scheduler = GrokScheduler(**arguments)  # Tune hands it metric and mode from TuneConfig
    callbacks = [
        GrokCallback(scheduler),
        GrokConsoleReporter(scheduler, interval_s=settings.console_interval_s),
        # Also opens and closes the sweep's parent run with its totals; journal under root.
        GrokMLflowLoggerCallback(
            scheduler,
            tracking_uri=tracking_uri,
            experiment_name=settings.experiment,
            search_space=settings.param_space,
            spool_dir=root / "mlflow_spool",
        ),
    ]
    resources = settings.resources
    if not isinstance(resources, PlacementGroupFactory):
        resources = dict(resources)
    trainable = tune.with_resources(settings.trainable, resources)
    tuner = tune.Tuner(
        trainable,
        param_space=dict(settings.param_space),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            scheduler=scheduler,
            num_samples=settings.num_samples,
            max_concurrent_trials=settings.max_concurrent_trials,
        ),
        run_config=tune.RunConfig(
            name=settings.experiment,
            storage_path=settings.storage_path or str(root / "ray_results"),
            callbacks=callbacks,
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )
    results = tuner.fit()
    summary = scheduler.summary()
    # Named by what tells the config each trial started with from the others' (as
    # SweepSummary.render does), not by result.config, which a kick by restart has rewritten
    # (weight_decay=0.8999999999999999).
    names = summary.names()
    return SweepOutcome(
        results=results,
        summary=summary,
        names=names,
        tracking_uri=tracking_uri,
        experiment_path=results.experiment_path,
    )
