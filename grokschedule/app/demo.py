"""``grokschedule demo``: a local grokking-aware sweep on modular arithmetic, logged to MLflow.

Twelve trials on CPU: weight decay 0 (memorizers that never generalize) against weight decay 1
(grokkers), over three moduli and two train fractions. GrokScheduler stops each grokker once it
generalizes, stops memorizers after a patience relative to their own memorization time, and
extends runs whose transition is under way at ``max_t``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import mlflow
import ray
from ray import tune

from grokschedule.adapters.trainables.modular import modular_trainable
from grokschedule.app.runner import SweepSettings, run_sweep
from grokschedule.tracking.views import ui_url

MAX_T = 3_000
MAX_EXTENSION = 1_500
DEMO_EXPERIMENT = "grokschedule-demo"


def demo_settings(root: Path, quick: bool = False) -> SweepSettings:
    """The embedded default sweep; ``quick`` shrinks it to 4 trials for tests."""
    param_space: dict[str, Any] = {
        "op": "add",
        "arch": "mlp",
        "embed_dim": 64,
        "hidden_dim": 256,
        "lr": 3e-3,
        "max_steps": MAX_T + MAX_EXTENSION,
        "eval_every": 50,
        "seed": 0,
        "weight_decay": tune.grid_search([0.0, 1.0]),
        "p": tune.grid_search([47] if quick else [47, 53, 59]),
        "train_fraction": tune.grid_search([0.5] if quick else [0.4, 0.6]),
    }
    if quick:
        param_space["lr"] = tune.grid_search([3e-3, 1e-3])
    scheduler = {  # run_sweep hands metric and mode to tune.TuneConfig, the rest to GrokScheduler
        "metric": "val_acc",
        "mode": "max",
        "time_attr": "step",
        "max_t": MAX_T,
        "max_extension": MAX_EXTENSION,
        "grok_threshold": 0.95,
    }
    return SweepSettings(
        param_space=param_space,
        scheduler=scheduler,
        trainable=modular_trainable,
        root=root,
        experiment=DEMO_EXPERIMENT,
    )


def run_demo(root: Path, quick: bool = False) -> int:
    started = time.monotonic()
    # Trial stdout (Ray's checkpoint chatter) stays in the trial logs; the console shows decisions.
    ray.init(
        address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False
    )
    try:
        outcome = run_sweep(demo_settings(root, quick))
    finally:
        ray.shutdown()
    print("\n=== grokschedule demo: summary ===")
    print(outcome.summary.render(outcome.names))
    print(f"Wall time: {time.monotonic() - started:.0f} s")
    print(f"Tune experiment: {outcome.experiment_path}")
    print(f"Review the runs:  mlflow ui --backend-store-uri {outcome.tracking_uri}")
    experiment = mlflow.MlflowClient(outcome.tracking_uri).get_experiment_by_name(DEMO_EXPERIMENT)
    if experiment is not None:  # MLflow 3's UI opens on the runs table only with this link
        print(f"  then open:      {ui_url('http://127.0.0.1:5000', experiment.experiment_id)}")
    return 0
