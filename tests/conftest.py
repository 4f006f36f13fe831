"""Shared fixtures: recorded real training curves and a helper that replays them."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
import ray

from grokschedule.core.contract import Observation

DATA = Path(__file__).parent / "data"

# The DeepSpeed trials under Tune (tests/test_trainer_tune.py, tests/test_deepspeed_rank_kill.py):
# a small modular-task model in two ZeRO-2 workers (gloo) that, with the trial, fit on the two
# CPUs of ``local_ray``. Each test module adds its lr, steps and checkpoint and failure policy.
DEEPSPEED_TRIAL = {
    "p": 23,
    "embed_dim": 32,
    "hidden_dim": 64,
    "num_workers": 2,
    "cpus_per_worker": 0.5,
    "zero_stage": 2,
    "batch_size": 32,
    "micro_batch_size": 16,
}


@pytest.fixture(scope="session")
def recorded_curves() -> dict[str, dict[str, list[float]]]:
    """Curves recorded from ``ModularTrainer`` (see tests/data/README.md for the configs)."""
    raw = json.loads((DATA / "recorded_curves.json").read_text())
    return {name: entry["curve"] for name, entry in raw.items()}


def observations(curve: Mapping[str, Sequence[float]]) -> Iterator[Observation]:
    """Replay a recorded curve as the scheduler would see it."""
    for i, step in enumerate(curve["step"]):
        yield Observation(
            step=step,
            target=curve["val_acc"][i],
            train_loss=curve["train_loss"][i],
            train_acc=curve["train_acc"][i],
            val_loss=curve["val_loss"][i],
            weight_norm=curve["weight_norm"][i],
            extras={k: v[i] for k, v in curve.items() if k.startswith("grok/")},
        )


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A fresh local Ray cluster per test module (never an existing one on this machine).

    Workers and the Train controller import what tests define (trainables, callbacks) by module
    name, so tests/ goes on their path.
    """
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parent)}},
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def process_group() -> Iterator[None]:
    """A one-rank gloo group, as Ray Train would have set up on a worker, with its env vars for
    the module. The group is made once and kept for the session: DeepSpeed keeps the groups it
    first saw, so an engine built after a destroy-and-recreate fails ("is not registered")."""
    import torch.distributed as dist  # not for the tests that never need torch

    with pytest.MonkeyPatch.context() as env:
        for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
            env.setenv(key, value)
        if not dist.is_initialized():
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            env.setenv("MASTER_ADDR", "127.0.0.1")
            env.setenv("MASTER_PORT", str(port))
            dist.init_process_group("gloo", rank=0, world_size=1)
        yield
