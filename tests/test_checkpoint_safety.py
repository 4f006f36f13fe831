"""Checkpoints on shared storage load with ``torch.load(weights_only=True)``: a file carrying a
pickled object is refused with an error naming it, and runs no code; real checkpoints of the
modular trainable and of a DeepSpeed ZeRO-2 engine (gloo, one rank) still resume."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
from ray.train import Checkpoint
from test_trainer_engine import make_run, train

from grokschedule.adapters.trainables.modular import STATE_FILE, _load_state, _save_state
from grokschedule.core.commands import Command
from grokschedule.core.kicks import Kick
from grokschedule.training import checkpoints
from grokschedule.training.checkpoints import CheckpointFallbackWarning, UnsafeCheckpointError
from grokschedule.training.deepspeed.engine import DeepSpeedRun
from grokschedule.training.modular.trainer import ModularTrainer, TrainConfig


class Payload:
    """A pickled object that, loaded with ``weights_only=False``, creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def test_a_pickled_object_is_refused_with_the_file_named_and_runs_nothing(
    tmp_path: Path,
) -> None:
    marker, path = tmp_path / "code-ran", tmp_path / "state.pt"
    torch.save({"model": {"w": torch.ones(2)}, "extra": Payload(marker)}, path)
    with pytest.raises(UnsafeCheckpointError) as error:
        checkpoints.load_tensors(path)
    message = str(error.value)
    assert str(path) in message and "weights_only=True) refused a pickled object" in message
    assert "(io.open)" in message and not marker.exists()
    torch.load(path, weights_only=False)  # what the old load did: the payload's code runs
    assert marker.exists()

    path.write_bytes(b"\x80\x02garbage")
    with pytest.raises(UnsafeCheckpointError, match=r"refused it \(.*\): the file is garbled"):
        checkpoints.load_tensors(path)


def modular_trainer() -> ModularTrainer:
    config = TrainConfig(p=7, embed_dim=8, hidden_dim=16, max_steps=12, eval_every=2, probe_every=2)
    return ModularTrainer(config)


def test_modular_checkpoints_resume_and_a_tampered_one_falls_back(tmp_path: Path) -> None:
    trainer = modular_trainer()
    run = trainer.run()
    next(run)
    trainer.apply_command(Command(0, "kick", Kick("grad_noise", {"std": 0.1}, duration_steps=4)))
    next(run)
    trainer.apply_command(
        Command(1, "kick", Kick("sgd_switch", {"lr": 0.1, "momentum": 0.5}, duration_steps=4))
    )
    next(run)  # rollback snapshot, kicks with RNG state, probes, the switched optimizer
    older, latest = tmp_path / "checkpoint_000000", tmp_path / "checkpoint_000001"
    for directory in (older, latest):
        directory.mkdir()
        _save_state(trainer.state_dict(), directory)

    resumed = modular_trainer()
    resumed.load_state_dict(_load_state(latest))
    assert [m["train_loss"] for m in trainer.run()] == [m["train_loss"] for m in resumed.run()]

    # The latest one rewritten with a pickled object (and resealed, so it verifies).
    marker = tmp_path / "code-ran"
    state = checkpoints.load_tensors(latest / STATE_FILE)
    checkpoints.save_tensors({**state, "extra": Payload(marker)}, latest / STATE_FILE)
    checkpoints.seal(latest)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = checkpoints.load_valid(Checkpoint(str(latest)), _load_state)
    assert state is not None and state["step"] == 6 and not marker.exists()
    (warning,) = [w for w in caught if issubclass(w.category, CheckpointFallbackWarning)]
    assert f"{latest / STATE_FILE}: torch.load(weights_only=True) refused a pickled object" in str(
        warning.message
    )
    assert f"resumed from the previous valid checkpoint {older}" in str(warning.message)


@pytest.mark.slow
def test_deepspeed_zero2_checkpoint_resumes_and_a_tampered_one_is_refused(
    process_group: None,
    tmp_path: Path,
) -> None:
    run = make_run(zero_stage=2)
    train(run, 2)
    run.save(tmp_path)
    restored = DeepSpeedRun.restore(run.config, run.task, run.device, tmp_path)
    train(run, 1)
    train(restored, 1)
    assert restored.weight_norm() == pytest.approx(run.weight_norm(), rel=1e-6)

    # DeepSpeed's own optimizer-state file, with a pickled object added to it.
    (optim,) = tmp_path.glob("checkpoint/*optim_states.pt")
    marker = tmp_path / "code-ran"
    state = torch.load(optim, weights_only=False)  # trusted: this test just wrote it
    torch.save({**state, "extra": Payload(marker)}, optim)
    with pytest.raises(
        UnsafeCheckpointError, match=f"{re.escape(str(optim))}: .*refused a pickled"
    ):
        DeepSpeedRun.restore(run.config, run.task, run.device, tmp_path)
    assert not marker.exists()
