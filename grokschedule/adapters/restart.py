"""Kicks by restart, for trainables that do not poll the control channel: PBT's trick with
public Tune calls."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ray.tune.result import DONE, SHOULD_CHECKPOINT
from ray.tune.schedulers import TrialScheduler

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial


def restart_with_config(
    tune_controller: TuneController,
    trial: Trial,
    result: Mapping[str, Any],
    new_config: Mapping[str, Any],
    experiment_tag: str | None = None,
) -> str:
    """PBT-style fallback for trainables that do not poll the channel: restart ``trial`` from
    the checkpoint reported with ``result`` under ``new_config``. Call from ``on_trial_result``
    and return what it returns (``TrialScheduler.PAUSE``).

    PBT's ``_exploit`` pauses with ``should_checkpoint=False`` and writes the checkpoint to
    resume from into a private field, after a blocking ``ray.get`` of a save. Here Tune does the
    same with public calls and without blocking the driver: on PAUSE it saves the trial (for a
    function trainable: hands back the checkpoint reported with this result), registers that
    checkpoint, then pauses with ``should_checkpoint=False``; the scheduler's
    ``choose_trial_to_run`` later starts it again from that checkpoint with ``trial.config``,
    which now is ``new_config``. Only a result that carried a checkpoint can be resumed without
    losing the steps since the last one, so any other is a ``ValueError``; keep the change
    pending until such a result arrives. A paused trial counts against
    ``max_concurrent_trials`` and waits behind PENDING trials (FIFO).
    """
    if not result.get(SHOULD_CHECKPOINT):
        raise ValueError(
            f"trial {trial.trial_id}: restart_with_config needs a result that carries a "
            "checkpoint; keep the change until the trainable reports one"
        )
    if result.get(DONE):
        raise ValueError(f"trial {trial.trial_id} is done: nothing to restart")
    trial.set_config(dict(new_config))
    if experiment_tag is not None:
        trial.set_experiment_tag(experiment_tag)
    return TrialScheduler.PAUSE
