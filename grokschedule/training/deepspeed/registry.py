"""The task a trial config names: the built-in modular task, or the LM task (optional extra)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from grokschedule.training.deepspeed.task import ModularDeepSpeedTask, Task


def build_task(name: str, config: Mapping[str, Any], activation_checkpointing: bool) -> Task:
    """The task named ``name``, built from the (flat) trial config."""
    if name == "modular":
        return ModularDeepSpeedTask(config, activation_checkpointing)
    if name == "lm":
        from grokschedule.training.deepspeed.lm_task import LMTask  # extra: transformers, peft

        return LMTask.from_mapping(config, activation_checkpointing)
    raise ValueError(f"task must be 'modular' or 'lm', got {name!r}")
