"""What the DeepSpeed loop needs from a task, and the built-in modular tasks in that shape.

A task is a fixed, in-memory data set (inputs and targets as tensors, identical on every rank)
plus a per-example statistic. Keeping data in memory and per-example makes every metric exact:
the loop can sum the statistics of any slice on any rank and all-reduce the sums, so validation
covers the whole set however it is sharded, and nothing depends on a sampler's state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from grokschedule.training.modular.task import build_model
from grokschedule.training.modular.trainer import TrainConfig

Split = tuple[torch.Tensor, torch.Tensor]


@dataclass
class ExampleStats:
    """Per-example statistics of one batch, all of shape ``(N,)``.

    ``loss`` keeps its graph in training; ``zero_loss`` marks a float32 loss of exactly 0
    (softmax collapse, arXiv 2501.04697); ``correct_prob`` is the mean probability the model puts
    on the right answer (the right class, or the right tokens of a completion).

    A completion task may add, in evaluation, what the probe-set signals are summed from
    (``contract.probe_metric``): ``token_loss`` the sum of token losses over the answer,
    ``tokens`` the answer's token count, ``confidence`` the mean max-softmax over the answer.
    """

    loss: torch.Tensor
    correct: torch.Tensor
    correct_prob: torch.Tensor
    zero_loss: torch.Tensor
    token_loss: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    confidence: torch.Tensor | None = None


class Task(Protocol):
    """A data set and a model family for ``grokschedule.trainer``."""

    name: str
    tokens_per_example: int  # for tokens/s; 1 for classification

    def build_model(self) -> nn.Module: ...

    def train_split(self) -> Split: ...

    def eval_splits(self) -> dict[str, Split]:
        """``"val"`` always; ``"probe"`` for a set of harder unseen cases, when the task has one."""
        ...

    def stats(
        self, model: Callable[..., Any], inputs: torch.Tensor, targets: torch.Tensor
    ) -> ExampleStats: ...


def classification_stats(logits: torch.Tensor, targets: torch.Tensor) -> ExampleStats:
    loss = F.cross_entropy(logits.float(), targets, reduction="none")
    return ExampleStats(
        loss=loss,
        correct=logits.detach().argmax(-1) == targets,
        correct_prob=torch.exp(-loss.detach()),  # p(target) = exp(-CE), no softmax needed
        zero_loss=loss.detach() == 0,
    )


class Checkpointed(nn.Module):
    """Recompute ``inner``'s activations in backward instead of storing them.

    The generic form of activation checkpointing, for models without a native switch: memory
    for activations drops to the inputs of ``inner``, at the cost of one extra forward.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: Any) -> Any:
        if not (self.training and torch.is_grad_enabled()):
            return self.inner(*args)
        return checkpoint(self.inner, *args, use_reentrant=False)


class ModularDeepSpeedTask:
    """The modular task under DeepSpeed: the same splits, models and metrics."""

    name = "modular"
    tokens_per_example = 1

    def __init__(self, config: Mapping[str, Any], activation_checkpointing: bool = False) -> None:
        # TrainConfig validates op, p, arch, sizes...; its optimizer fields are the trainer's own.
        self.config = TrainConfig.from_mapping(config)
        self.activation_checkpointing = activation_checkpointing
        self._split = self.config.task.split()

    def build_model(self) -> nn.Module:
        c = self.config
        model = build_model(c.arch, c.p, c.embed_dim, c.hidden_dim, c.init_scale)
        return Checkpointed(model) if self.activation_checkpointing else model

    def train_split(self) -> Split:
        return self._split[0], self._split[1]

    def eval_splits(self) -> dict[str, Split]:
        return {"val": (self._split[2], self._split[3])}

    def stats(
        self, model: Callable[..., Any], inputs: torch.Tensor, targets: torch.Tensor
    ) -> ExampleStats:
        return classification_stats(model(inputs), targets)
