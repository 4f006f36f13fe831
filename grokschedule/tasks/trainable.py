"""The Ray Tune function trainable for the built-in modular tasks.

It reports the metric contract every ``eval_every`` steps and checkpoints every
``checkpoint_every`` steps, so a failed trial resumes where it was (``FailureConfig``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from ray import tune

from grokschedule.tasks.training import ModularTrainer, TrainConfig

STATE_FILE = "trainer.pt"


def modular_trainable(config: dict[str, Any]) -> None:
    """Train one modular-arithmetic model under Tune; ``config`` holds ``TrainConfig`` fields
    plus ``checkpoint_every`` (steps, default 500) and ``torch_threads`` (default 1)."""
    torch.set_num_threads(int(config.get("torch_threads", 1)))
    checkpoint_every = int(config.get("checkpoint_every", 500))
    trainer = ModularTrainer(TrainConfig.from_mapping(config))
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            trainer.load_state_dict(torch.load(Path(directory) / STATE_FILE, weights_only=False))
    for metrics in trainer.run():
        if trainer.step % checkpoint_every == 0:
            with tempfile.TemporaryDirectory() as directory:
                torch.save(trainer.state_dict(), Path(directory) / STATE_FILE)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
        else:
            tune.report(metrics)
