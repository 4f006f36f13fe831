"""A corrupt or missing latest DeepSpeed checkpoint: every rank verifies it against the rank
manifests, the ranks agree on the newest one all accept, and none valid is a fresh start."""

from __future__ import annotations

import json
import os
import shutil
import socket
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch
import torch.multiprocessing as mp
from ray.train import Checkpoint

from grokschedule.training import checkpoints
from grokschedule.training.checkpoints import CheckpointFallbackWarning, load_agreed

if TYPE_CHECKING:  # DeepSpeed is imported in the tests that use it: spawned ranks skip it
    from grokschedule.training.deepspeed.engine import DeepSpeedRun

CPU = torch.device("cpu")


def two_checkpoints(trial: Path) -> tuple[DeepSpeedRun, Path, Path]:
    """A ZeRO-2 run saved at step 2 and step 4, as Ray Train lays a trial's checkpoints out."""
    from test_trainer_engine import make_run, train

    run = make_run(zero_stage=2)
    older, latest = trial / "checkpoint_000000", trial / "checkpoint_000001"
    train(run, 2)
    run.save(older)
    train(run, 2)
    run.save(latest)
    return run, older, latest


def resume(latest: Path, load: Any) -> tuple[Any, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CheckpointFallbackWarning)
        loaded = load_agreed(Checkpoint(str(latest)), load, CPU)
    return loaded, [str(w.message) for w in caught if w.category is CheckpointFallbackWarning]


def saved_step(directory: Path) -> int:
    """The step a checkpoint was saved at (its run state), without building an engine."""
    return int(json.loads((directory / "trainer_state.json").read_text())["step"])


@pytest.mark.slow
def test_a_truncated_or_missing_latest_falls_back_to_the_previous_and_none_starts_fresh(
    process_group: None, tmp_path: Path
) -> None:
    from grokschedule.training.deepspeed.engine import DeepSpeedRun

    run, older, latest = two_checkpoints(tmp_path)
    assert json.loads((latest / checkpoints.rank_manifest(0)).read_text())["world_size"] == 1

    def restore(directory: Path) -> DeepSpeedRun:
        return DeepSpeedRun.restore(run.config, run.task, run.device, directory)

    (shard,) = latest.glob("checkpoint/*optim_states.pt")
    backup = shard.read_bytes()
    shard.write_bytes(backup[: len(backup) // 2])  # truncated on upload
    restored, (message,) = resume(latest, restore)  # a real DeepSpeed resume, from step 2
    assert restored is not None and restored.step == 2
    assert f"{latest}: CorruptCheckpointError: checkpoint/{shard.name} has" in message
    assert f"resumed from the previous valid checkpoint {older}" in message

    # Which checkpoint is chosen needs no engine: the rest read the step the chosen one holds.
    shard.write_bytes(backup)
    assert resume(latest, saved_step) == (4, [])  # intact again: the latest, no warning

    shard.unlink()  # a shard that never arrived
    step, (message,) = resume(latest, saved_step)
    assert step == 2
    assert f"checkpoint/{shard.name} is missing" in message and str(older) in message

    shard.write_bytes(backup)
    (latest / checkpoints.rank_manifest(0)).unlink()  # no manifest: pre-manifest, unverified
    assert resume(latest, saved_step) == (4, [])

    shutil.rmtree(latest)  # the whole latest directory is gone
    step, (message,) = resume(latest, saved_step)
    assert step == 2
    assert f"{latest}: CorruptCheckpointError: {latest} does not exist" in message

    (older / "trainer_state.json").write_text("{}")  # and the only other one is altered
    restored, (message,) = resume(latest, restore)
    assert restored is None
    assert str(latest) in message and f"{older}: CorruptCheckpointError" in message
    assert message.endswith("starting from scratch")


def test_a_missing_rank_manifest_is_corrupt(tmp_path: Path) -> None:
    for rank in (0, 2):
        (tmp_path / f"shard{rank}").write_text(str(rank))
        checkpoints.seal_rank(tmp_path, rank, world_size=3)
    with pytest.raises(
        checkpoints.CorruptCheckpointError, match=r"manifest\.rank1\.json is missing"
    ):
        checkpoints.verify_sharded(tmp_path)
    with pytest.raises(ValueError, match="rank must be in"):
        checkpoints.seal_rank(tmp_path, 3, world_size=3)


# What each of two ranks sees of three checkpoints (newest first): neither sees the newest two
# intact, only the oldest is intact on both; rank 1 also lists one fewer sibling directory.
BROKEN = {0: ["checkpoint_000002"], 1: ["checkpoint_000001"]}


def _agree(rank: int, root: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    trial = Path(root) / f"rank{rank}"
    for index in range(3):
        directory = trial / f"checkpoint_{index:06d}"
        directory.mkdir(parents=True)
        (directory / "weights").write_text(f"step {index}")
        checkpoints.seal_rank(directory, 0, world_size=1)
        if directory.name in BROKEN[rank]:
            (directory / "weights").write_text("garbled")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CheckpointFallbackWarning)
        chosen = load_agreed(
            Checkpoint(str(trial / "checkpoint_000002")), lambda d: (d / "weights").read_text(), CPU
        )
    (Path(root) / f"result{rank}.json").write_text(
        json.dumps({"chosen": chosen, "messages": [str(w.message) for w in caught]})
    )
    torch.distributed.destroy_process_group()


def test_two_ranks_seeing_different_damage_agree_on_the_newest_valid_for_both(
    tmp_path: Path,
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_agree, args=(str(tmp_path), port), nprocs=2)
    for rank in (0, 1):
        result = json.loads((tmp_path / f"result{rank}.json").read_text())
        assert result["chosen"] == "step 0"
        (message,) = result["messages"]
        trial = tmp_path / f"rank{rank}"
        assert f"previous valid checkpoint {trial / 'checkpoint_000000'}" in message
        own = "checkpoint_000002" if rank == 0 else "checkpoint_000001"
        other = "checkpoint_000001" if rank == 0 else "checkpoint_000002"
        assert f"{trial / own}: CorruptCheckpointError: weights" in message
        assert f"{trial / other}: rejected on another rank" in message
