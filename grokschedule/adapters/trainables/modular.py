"""The Ray Tune function trainable for the built-in modular tasks.

It reports the metric contract every ``eval_every`` steps and checkpoints every
``checkpoint_every`` steps, so a failed trial resumes where it was (``FailureConfig``).

With ``config["control"] = True`` it also polls the live control channel
(``grokschedule.adapters.control_channel``) every ``control_poll_every`` steps (default
``eval_every``: the scheduler decides on reports, so polling right after each one adds no latency),
applies the commands between steps, adds the ``control/*`` acknowledgement keys to every report, and
checkpoints with the first report after a command, so the rollback snapshot taken before a kick
survives a worker restart. It needs the sweep's key in the config (``CONTROL_KEY``, which
``GrokScheduler(interventions=...)`` adds) and applies only the commands it authenticates; the
others count in ``control/refused``. Without it the loop is the plain one.

Trainables that do not poll get kicks by restart instead (``control.restart_with_config``);
``kick_config_change`` says what a kick becomes in this trainable's config.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from ray import tune

from grokschedule.adapters.control_channel import ControlClient, key_from_config
from grokschedule.core.commands import config_change
from grokschedule.core.kicks import BATCH_SIZE, Kick
from grokschedule.training import checkpoints
from grokschedule.training.modular.trainer import ModularTrainer, TrainConfig

STATE_FILE = "trainer.pt"


def _save_state(state: dict[str, Any], directory: Path) -> None:
    checkpoints.save_tensors(state, directory / STATE_FILE)
    checkpoints.seal(directory)


def _load_state(directory: Path) -> Any:
    return checkpoints.load_tensors(directory / STATE_FILE)  # weights_only: runs no pickled code


def modular_trainable(config: dict[str, Any]) -> None:
    """Train one modular-arithmetic model under Tune; ``config`` holds ``TrainConfig`` fields
    plus ``checkpoint_every`` (steps, default 500), ``torch_threads`` (default 1), ``control``
    (poll the control channel, default False) and ``control_poll_every`` (steps)."""
    torch.set_num_threads(int(config.get("torch_threads", 1)))
    checkpoint_every = int(config.get("checkpoint_every", 500))
    trainer = ModularTrainer(TrainConfig.from_mapping(config))
    # The latest checkpoint that verifies, else the one before it (with a warning).
    state = checkpoints.load_valid(tune.get_checkpoint(), _load_state)
    if state is not None:
        trainer.load_state_dict(state)
    client = None
    if config.get("control", False):
        poll_every = int(config.get("control_poll_every", trainer.config.eval_every))
        trial_id = tune.get_context().get_trial_id()
        key = key_from_config(config)
        client = ControlClient(trial_id, poll_every, key, acked_id=trainer.control.acked_id)
    checkpointed_ack = trainer.control.acked_id
    for metrics in trainer.run(None if client is None else client.poll):
        if client is not None:
            metrics.update(trainer.control_metrics())
            metrics.update(client.metrics())
        if trainer.step % checkpoint_every == 0 or trainer.control.acked_id != checkpointed_ack:
            checkpointed_ack = trainer.control.acked_id
            with tempfile.TemporaryDirectory() as directory:
                _save_state(trainer.state_dict(), Path(directory))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
            if client is not None:
                client.checkpointed(checkpointed_ack)
        else:
            tune.report(metrics)


def kick_config_change(kick: Kick, config: Mapping[str, Any]) -> dict[str, Any]:
    """``control.config_change`` for ``modular_trainable``: keys the config leaves out take
    ``TrainConfig``'s defaults, and the changed config must still be valid.

    A restart holds the change until the next one, so ``duration_steps`` is not honoured here:
    to end a window, restart again with the old values (``GrokScheduler`` does). A batch_size
    kick on a full-batch run is a ``ValueError`` (there is no larger batch). An sgd_switch
    restart starts SGD fresh, and switching back starts a fresh AdamW: its moments do not
    survive the way the live channel keeps them.
    """
    current = asdict(TrainConfig.from_mapping(config))
    if kick.kind == BATCH_SIZE and current["batch_size"] is None:
        raise ValueError("a batch_size kick needs a mini-batch run; this one is full-batch")
    change = config_change(kick, current)
    TrainConfig.from_mapping({**config, **change})  # the result must be a valid config
    return change
