"""Shared fixtures: recorded real training curves and a helper that replays them."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
import ray

from grokschedule.core.contract import Observation

DATA = Path(__file__).parent / "data"


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
