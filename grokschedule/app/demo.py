"""``grokschedule demo``: a local grokking-aware sweep, logged to MLflow.

``--task modular`` (default): twelve trials on CPU, weight decay 0 (memorizers that never
generalize) against weight decay 1 (grokkers), over three moduli and two train fractions.
GrokScheduler stops each grokker once it generalizes, stops memorizers after a patience relative
to their own memorization time, and extends runs whose transition is under way at ``max_t``.

``--task lm``: eight causal-LM trials through the DeepSpeed trainer (ZeRO-2 on gloo, one Train V2
worker each): a tiny Llama learning permutation composition written as text, over weight decay,
data fraction and LoRA rank, with interventions on — kicks arrive through the live control
channel behind a rollback point. Same scheduler, same summary, same MLflow review.
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
from grokschedule.app.runner import SweepSettings, run_sweep, use_local_train_settings
from grokschedule.tracking.views import ui_url

MAX_T = 3_000
MAX_EXTENSION = 1_500
DEMO_EXPERIMENT = "grokschedule-demo"
LM_DEMO_EXPERIMENT = "grokschedule-demo-lm"
LM_MAX_T = 2_000
LM_MAX_EXTENSION = 1_000
TASKS = ("modular", "lm")


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


def lm_demo_settings(root: Path, quick: bool = False) -> SweepSettings:
    """The LM sweep; ``quick`` shrinks it to 2 short trials for tests."""
    from grokschedule.adapters.trainables.deepspeed import deepspeed_trainable  # needs deepspeed

    max_t, extension, every = (200, 100, 50) if quick else (LM_MAX_T, LM_MAX_EXTENSION, 100)
    param_space: dict[str, Any] = {
        "task": "lm",
        "lm_op": "compose",
        "lm_perm_size": 4,
        "lm_hidden": 64,
        "lm_layers": 2,
        "lm_train_fraction": tune.grid_search([0.5] if quick else [0.2, 0.5]),
        "lm_lora_rank": tune.grid_search([None] if quick else [None, 8]),
        "weight_decay": tune.grid_search([0.0, 1.0]),
        "lr": 3e-3,
        "num_workers": 1,
        "cpus_per_worker": 0.9,  # with the Tune functions' 0.01 each, two trials fit 2 CPUs
        "zero_stage": 2,
        "batch_size": 128,
        "micro_batch_size": 128,
        "max_steps": max_t + extension,
        "eval_every": every,
        "checkpoint_every": 5 * every,
        "control": True,  # kicks and rollbacks through the live control channel
        "seed": 0,
    }
    scheduler = {
        "metric": "val_acc",  # exact match of the whole answer on held-out pairs
        "mode": "max",
        "time_attr": "step",
        "max_t": max_t,
        "max_extension": extension,
        "grok_threshold": 0.95,
        # One kick per trial, so a memorizer is kicked once, then judged within the budget.
        "interventions": {"max_kicks": 1},
        # Memorization comes late in these runs (~1,000 steps), so patience and the predictor's
        # judgement count from it at smaller multiples than the defaults (20× and 4×).
        "patience_factor": 0.5,
        "judge_after": 1.5,
    }
    return SweepSettings(
        param_space=param_space,
        scheduler=scheduler,
        trainable=deepspeed_trainable,
        root=root,
        experiment=LM_DEMO_EXPERIMENT,
        resources={"cpu": 0.01},  # the Tune function only waits; its Train worker holds a CPU
        # One trial per CPU: a trial started beyond that would wait for a worker and time out.
        max_concurrent_trials=max(1, os.cpu_count() or 1),
    )


def run_demo(root: Path, quick: bool = False, task: str = "modular") -> int:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    settings = lm_demo_settings(root, quick) if task == "lm" else demo_settings(root, quick)
    started = time.monotonic()
    use_local_train_settings()
    # Trial stdout (Ray's checkpoint chatter) stays in the trial logs; the console shows decisions.
    ray.init(
        address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False
    )
    try:
        outcome = run_sweep(settings)
    finally:
        ray.shutdown()
    print("\n=== grokschedule demo: summary ===")
    print(outcome.summary.render(outcome.names))
    print(f"Wall time: {time.monotonic() - started:.0f} s")
    print(f"Tune experiment: {outcome.experiment_path}")
    print(f"Review the runs:  mlflow ui --backend-store-uri {outcome.tracking_uri}")
    experiment = mlflow.MlflowClient(outcome.tracking_uri).get_experiment_by_name(
        settings.experiment
    )
    if experiment is not None:  # MLflow 3's UI opens on the runs table only with this link
        print(f"  then open:      {ui_url('http://127.0.0.1:5000', experiment.experiment_id)}")
    return 0
