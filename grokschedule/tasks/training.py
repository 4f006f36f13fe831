"""The training loop for the built-in modular tasks, free of Ray so it can be driven anywhere.

It reports the metric contract the scheduler reads: ``step``, ``train_loss``, ``train_acc``,
``val_loss``, ``val_acc``, ``weight_norm`` and worker-side ``grok/*`` signals (validation
confidence, probability on the correct class, and the share of training samples whose loss is
exactly zero in float32 — the softmax-collapse marker of arXiv 2501.04697).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from grokschedule.tasks.modular import ModularTask, build_model

OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one modular-arithmetic run needs; checked before any compute is spent."""

    op: str = "add"
    p: int = 47
    train_fraction: float = 0.5
    seed: int = 0
    arch: str = "mlp"
    embed_dim: int = 128
    hidden_dim: int = 512
    init_scale: float = 1.0
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 1.0
    momentum: float = 0.9
    batch_size: int | None = None  # None: full batch
    max_steps: int = 5_000
    eval_every: int = 50

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("max_steps", "eval_every", "embed_dim", "hidden_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.batch_size is not None and self.batch_size <= 0:
            raise ValueError(f"batch_size must be > 0 or None, got {self.batch_size}")

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> TrainConfig:
        """Build from a Tune config, ignoring keys that belong to other components."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in known})

    @property
    def task(self) -> ModularTask:
        return ModularTask(self.op, self.p, self.train_fraction, self.seed)


def make_optimizer(
    name: str, params: Any, lr: float, weight_decay: float, momentum: float = 0.9
) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


class ModularTrainer:
    """Owns model, optimizer and data; ``run`` yields one metrics dict every ``eval_every``."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        torch.manual_seed(config.seed)
        self.x_train, self.y_train, self.x_val, self.y_val = config.task.split()
        self.model = build_model(
            config.arch, config.p, config.embed_dim, config.hidden_dim, config.init_scale
        )
        self.optimizer = make_optimizer(
            config.optimizer,
            self.model.parameters(),
            config.lr,
            config.weight_decay,
            config.momentum,
        )
        self.step = 0
        self._batch_generator = torch.Generator().manual_seed(config.seed + 1)

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.config.batch_size
        if size is None or size >= len(self.x_train):
            return self.x_train, self.y_train
        index = torch.randint(len(self.x_train), (size,), generator=self._batch_generator)
        return self.x_train[index], self.y_train[index]

    def train_step(self) -> None:
        x, y = self._batch()
        self.model.train()
        loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        train_logits = self.model(self.x_train).float()
        val_logits = self.model(self.x_val).float()
        train_losses = F.cross_entropy(train_logits, self.y_train, reduction="none")
        val_probs = val_logits.softmax(-1)
        weight_norm = math.sqrt(sum(float(p.pow(2).sum()) for p in self.model.parameters()))
        return {
            "step": self.step,
            "train_loss": float(train_losses.mean()),
            "train_acc": float((train_logits.argmax(-1) == self.y_train).float().mean()),
            "val_loss": float(F.cross_entropy(val_logits, self.y_val)),
            "val_acc": float((val_logits.argmax(-1) == self.y_val).float().mean()),
            "weight_norm": weight_norm,
            "grok/val_confidence": float(val_probs.max(-1).values.mean()),
            "grok/val_correct_prob": float(val_probs.gather(1, self.y_val[:, None]).mean()),
            "grok/zero_loss_share": float((train_losses == 0).float().mean()),
        }

    def run(self) -> Iterator[dict[str, float]]:
        """Train to ``max_steps``, yielding metrics at every evaluation point."""
        while self.step < self.config.max_steps:
            self.train_step()
            if self.step % self.config.eval_every == 0 or self.step == self.config.max_steps:
                yield self.evaluate()

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "config": asdict(self.config),
            "batch_rng": self._batch_generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self._batch_generator.set_state(state["batch_rng"])
