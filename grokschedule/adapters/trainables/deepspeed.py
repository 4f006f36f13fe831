"""Run one Tune trial as a Ray Train V2 ``TorchTrainer`` over DeepSpeed, the Ray 2.60 way.

A V2 trainer cannot be handed to a ``Tuner``; the Tune function below calls ``trainer.fit()``
with ``TuneReportCallback`` so every rank-0 report reaches the scheduler (with ``step`` as the
time attribute: Tune's ``training_iteration`` restarts when Train resumes). The Train run lives
under the trial's own directory with a fixed name, so a retried trial and ``Tuner.restore`` find
Train's latest checkpoint and the workers resume from it with ``engine.load_checkpoint``.

Give the Tune function itself few resources: it only waits on the controller. On the 2-CPU test
machine, ``tune.with_resources(deepspeed_trainable, {"cpu": 0.01})`` with two workers at
``cpus_per_worker=0.5`` runs one trial at a time. One trial may span several 8-GPU nodes:
``num_workers=16, use_gpu=True`` asks for 16 GPU workers across the cluster.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ray import tune
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from grokschedule.adapters.control_channel import key_from_config
from grokschedule.adapters.ray_compat import WORKER_GROUP_START_TIMEOUT_S_ENV_VAR
from grokschedule.adapters.trainables.commands import COMMANDS_KEY, ChannelCommands
from grokschedule.adapters.trainables.train_guard import (
    AbortTrainRunOnStop,
    ReleaseOnStop,
    register_reaper,
    start_reaper,
)
from grokschedule.training.deepspeed.config import TrainerConfig, check_task
from grokschedule.training.deepspeed.registry import build_task

if TYPE_CHECKING:
    from grokschedule.training.deepspeed.reporting import CommandSource

TRAIN_RUN_NAME = "train"  # the Train run's directory inside the trial's directory
# Given a trial id, the command source its workers poll (e.g. the control channel's client).
CommandSourceFactory = Callable[[str], "CommandSource | None"]


def make_trainable(
    commands: CommandSourceFactory | None = None,
) -> Callable[[dict[str, Any]], None]:
    """A Tune function trainable; ``commands(trial_id)`` gives the source of live commands
    (kicks, LoRA rank) that rank 0 polls every ``poll_every`` steps. Without it a trial whose
    config sets ``control=True`` polls the live control channel, so ``GrokScheduler``'s kicks
    and rollbacks reach its DeepSpeed engine."""

    def deepspeed_trainable(config: dict[str, Any]) -> None:
        # Bad input fails here, before any worker is placed: the config and the user's
        # DeepSpeed JSON on construction, empty splits and LoRA ranks on the task.
        trainer_config = TrainerConfig.from_mapping(config)
        task = build_task(trainer_config.task, config, trainer_config.activation_checkpointing)
        check_task(trainer_config, task)
        context = tune.get_context()
        loop_config = dict(config)
        if trainer_config.deepspeed_config is not None:  # the JSON file may not be on workers
            loop_config["deepspeed_config"] = trainer_config.user_deepspeed_config
        trial_id = context.get_trial_id()
        if commands is not None:
            loop_config[COMMANDS_KEY] = commands(trial_id)
        elif trainer_config.control:
            loop_config[COMMANDS_KEY] = ChannelCommands(trial_id, key_from_config(config))
        run(trainer_config, loop_config)

    # Tune builds the trial's Trainable class with these mixins: stop and pause then abort the
    # Train run before the trial actor exits (see guard.py).
    deepspeed_trainable.__mixins__ = (AbortTrainRunOnStop,)  # type: ignore[attr-defined]
    return deepspeed_trainable


def worker_loop(loop_config: dict[str, Any]) -> None:
    """``train_loop.train_loop_per_worker``, imported where it runs, on the Train workers. The
    trial actor only hands this function to ``TorchTrainer``; importing the loop there would load
    DeepSpeed (and MLflow, which DeepSpeed's autotuner imports) into every trial actor, ~1 s of
    its start."""
    from grokschedule.adapters.trainables.train_loop import train_loop_per_worker

    train_loop_per_worker(loop_config)


def run(config: TrainerConfig, loop_config: dict[str, Any]) -> None:
    """``TorchTrainer.fit()`` for this trial, torn down when Tune stops or pauses the trial."""
    storage = tune.get_context().get_storage()
    # Bounded waits: a worker group that cannot be placed fails the trial after
    # (controller_failure_limit + 1) × worker_start_timeout_s instead of retrying forever.
    os.environ[WORKER_GROUP_START_TIMEOUT_S_ENV_VAR] = str(config.worker_start_timeout_s)
    reaper = start_reaper()
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=config.num_workers,
            use_gpu=config.use_gpu,
            resources_per_worker=config.resources_per_worker,
        ),
        run_config=RunConfig(
            name=TRAIN_RUN_NAME,
            storage_path=storage.trial_fs_path,
            storage_filesystem=storage.storage_filesystem,
            callbacks=[TuneReportCallback(), ReleaseOnStop(reaper)],
            failure_config=FailureConfig(
                max_failures=config.max_failures,
                controller_failure_limit=config.controller_failure_limit,
                max_preemption_failures=config.max_failures,
            ),
            checkpoint_config=CheckpointConfig(num_to_keep=config.num_to_keep),
        ),
    )
    register_reaper(reaper)
    trainer.fit()


deepspeed_trainable = make_trainable()
