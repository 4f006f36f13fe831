"""What the DeepSpeed loop does between optimizer steps besides training: poll a command source
and report the metric contract. Free of Ray, so the Ray Train loop
(``adapters.trainables.train_loop``) and the GPU benchmark (``bench.trainer``), which must run
where Ray is not installed, share one definition of what a report costs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch.distributed as dist

from grokschedule.training.deepspeed.engine import DeepSpeedRun, EngineCommand, broadcast_object
from grokschedule.training.deepspeed.trainer_probes import TrainerProbes, probe_set_metrics

CommandSource = Callable[[int], Sequence[EngineCommand]]


def poll_commands(source: CommandSource | None, step: int) -> list[EngineCommand]:
    """The hook between the trainer and a control channel: rank 0 asks ``source`` for the
    commands pending at ``step`` and broadcasts them, so every rank applies the same commands
    at the same step (ranks that disagreed would deadlock in the next collective)."""
    pending = list(source(step)) if source is not None and _rank() == 0 else []
    return list(broadcast_object(pending))


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def report_metrics(run: DeepSpeedRun, probes: TrainerProbes | None = None) -> dict[str, Any]:
    """The metric contract (see README), reduced over all ranks; every rank gets the same.
    A completion task's probe-set signals come with every report (``probe_set_metrics``); the
    scheduled ``probes``, when given, add theirs when one is due."""
    metrics: dict[str, Any] = {"step": run.step, **run.meter.reduce()}
    for split in run.task.eval_splits():
        result = run.evaluate(split)
        metrics[f"{split}_loss"] = result["loss"]
        metrics[f"{split}_acc"] = result["acc"]
        metrics[f"grok/{split}_correct_prob"] = result["correct_prob"]
        metrics.update(probe_set_metrics(split, result))
    if probes is not None:
        metrics.update(probes.metrics(run))
    metrics["weight_norm"] = run.weight_norm()
    metrics["lr"] = run.lr
    metrics["batch_size"] = run.batch_size
    metrics["optimizer"] = run.optimizer_name
    return metrics
