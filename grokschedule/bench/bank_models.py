"""Many copies of the real modular-arithmetic models, trained at once for the curve bank.

A bank row must be the run ``ModularTrainer(TrainConfig(...))`` would make, so the models here are
the classes of ``training.modular.task`` themselves: each one is built by ``build_model`` right
after ``torch.manual_seed(seed)`` (the trainer's init, bit for bit), their parameters are stacked
on a leading model dimension, and ``torch.func`` runs the module's own forward and autograd's
backward once for all of them (``vmap`` of ``grad`` over ``functional_call``). Only the optimizers
are written out here: ``torch.optim`` keeps one lr and weight decay per parameter group, not per
slice of a stacked tensor, so AdamW and SGD with momentum are batched by hand with per-model
hyperparameters and checked against ``torch.optim`` in the tests.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from grokschedule.training.modular.task import build_model

# Architectures whose forward has no data-dependent control flow, so vmap can batch it (the MoE's
# top-1 routing indexes rows by the router's choice, which vmap cannot).
BANK_ARCHITECTURES = ("mlp", "transformer")
BETAS = (0.9, 0.98)  # make_optimizer("adamw") in training/modular/trainer.py
EPS = 1e-8  # torch.optim.AdamW's default, which make_optimizer keeps
METRICS = (
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "weight_norm",
    "val_confidence",
    "val_correct_prob",
    "zero_loss_share",
)

Params = dict[str, torch.Tensor]


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Memorizing models drive their gradients and Adam second moments into float32 subnormals,
    which x86 CPUs compute on up to ~100× slower (a batch took 1,000 s instead of 30 s here).
    Flushing them to zero changes only values below 1.2e-38. The setting is process-wide, so it
    is put back afterwards (torch's default is off)."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def _per_model(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (M,) vector shaped to broadcast over a stacked parameter's model dimension."""
    return values.view((-1,) + (1,) * (like.dim() - 1))


class BatchedOptimizer(Protocol):
    def step_(self, params: Params, grads: Params) -> None: ...


class BatchedAdamW:
    """torch.optim.AdamW's update (decoupled decay, bias correction, betas (0.9, 0.98)) with a
    per-model lr and weight decay broadcast over each stacked parameter."""

    def __init__(self, params: Params, lr: torch.Tensor, weight_decay: torch.Tensor) -> None:
        self.lr, self.weight_decay = lr, weight_decay  # (M,)
        self.exp_avg = {name: torch.zeros_like(param) for name, param in params.items()}
        self.exp_avg_sq = {name: torch.zeros_like(param) for name, param in params.items()}
        self.t = 0

    def step_(self, params: Params, grads: Params) -> None:
        self.t += 1
        beta1, beta2 = BETAS
        bias_correction1 = 1 - beta1**self.t
        bias_correction2_sqrt = (1 - beta2**self.t) ** 0.5
        for name, param in params.items():
            grad, exp_avg, exp_avg_sq = grads[name], self.exp_avg[name], self.exp_avg_sq[name]
            lr = _per_model(self.lr, param)
            param.mul_(1 - lr * _per_model(self.weight_decay, param))
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(EPS)
            param.sub_(exp_avg / denom * (lr / bias_correction1))


class BatchedSGD:
    """torch.optim.SGD's update (L2 weight decay added to the gradient, heavy-ball momentum, no
    dampening, not Nesterov) with a per-model lr, weight decay and momentum. The buffer starts at
    zero, so its first update ``0 * momentum + d_p`` is exactly torch's ``clone(d_p)``."""

    def __init__(
        self, params: Params, lr: torch.Tensor, weight_decay: torch.Tensor, momentum: torch.Tensor
    ) -> None:
        self.lr, self.weight_decay, self.momentum = lr, weight_decay, momentum  # (M,)
        self.buffer = {name: torch.zeros_like(param) for name, param in params.items()}

    def step_(self, params: Params, grads: Params) -> None:
        for name, param in params.items():
            d_p = grads[name].add(param * _per_model(self.weight_decay, param))
            buffer = self.buffer[name].mul_(_per_model(self.momentum, param)).add_(d_p)
            param.sub_(buffer * _per_model(self.lr, param))


def init_models(
    arch: str,
    p: int,
    embed_dim: int,
    hidden_dim: int,
    seeds: Sequence[int],
    scales: Sequence[float],
) -> list[nn.Module]:
    """The models ``ModularTrainer`` would build for these seeds and init scales: each right
    after ``torch.manual_seed(seed)``, as the trainer does. The global RNG is put back after."""
    models = []
    with torch.random.fork_rng(devices=[]):
        for seed, scale in zip(seeds, scales, strict=True):
            torch.manual_seed(seed)
            models.append(build_model(arch, p, embed_dim, hidden_dim, scale))
    return models


class ModelBatch:
    """M same-shaped models of one architecture, stacked on a leading model dimension and trained
    in lockstep on the same full batch, each with its own optimizer hyperparameters.

    The module kept here lives on the meta device: it supplies only the forward code, and
    ``functional_call`` runs it on each model's slice of ``params``. It stays in training mode:
    the models have no dropout, so train and eval mode compute the same function, and training
    mode keeps ``TransformerEncoderLayer`` off its fused inference kernel, which vmap cannot batch.
    """

    def __init__(self, module: nn.Module, params: Params, optimizer: BatchedOptimizer) -> None:
        self.module = module
        self.params = params
        self.optimizer = optimizer
        self._loss_and_grads = vmap(grad_and_value(self._loss), in_dims=(0, None, None))
        self._logits = vmap(self._forward, in_dims=(0, None))

    @classmethod
    def create(
        cls,
        arch: str,
        p: int,
        embed_dim: int,
        hidden_dim: int,
        seeds: Sequence[int],
        init_scales: Sequence[float],
        optimizer: str,
        lrs: Sequence[float],
        weight_decays: Sequence[float],
        momentums: Sequence[float] | None = None,
        device: str | torch.device = "cpu",
    ) -> ModelBatch:
        """Build on CPU (a seed gives the same weights on every device), stack, then move.
        ``momentums`` is SGD's and must be None for AdamW."""
        if arch not in BANK_ARCHITECTURES:
            raise ValueError(f"arch must be one of {BANK_ARCHITECTURES}, got {arch!r}")
        models = init_models(arch, p, embed_dim, hidden_dim, seeds, init_scales)
        per_model = [dict(model.named_parameters()) for model in models]
        params = {
            name: torch.stack([named[name].detach() for named in per_model]).to(device)
            for name in per_model[0]
        }

        def vector(values: Sequence[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device)

        batched: BatchedOptimizer
        if optimizer == "adamw":
            if momentums is not None:
                raise ValueError("momentums is SGD's; pass None for optimizer 'adamw'")
            batched = BatchedAdamW(params, vector(lrs), vector(weight_decays))
        elif optimizer == "sgd":
            if momentums is None:
                raise ValueError("optimizer 'sgd' needs momentums")
            batched = BatchedSGD(params, vector(lrs), vector(weight_decays), vector(momentums))
        else:
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {optimizer!r}")
        return cls(copy.deepcopy(models[0]).to("meta"), params, batched)

    def __len__(self) -> int:
        return len(next(iter(self.params.values())))

    def _forward(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = functional_call(self.module, params, (x,))
        return logits

    def _loss(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self._forward(params, x), y)

    def loss_and_grads(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Params]:
        """Mean cross-entropy per model (M,) and its gradients, stacked like ``params``.

        Attention runs on SDPA's math kernel, made of matmuls and a softmax that vmap batches;
        CPU's fused flash kernel has no batching rule, and vmap would run it model by model."""
        with sdpa_kernel(SDPBackend.MATH):
            grads, loss = self._loss_and_grads(self.params, x, y)
        return loss, grads

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One full-batch optimizer step for every model."""
        grads = self.loss_and_grads(x, y)[1]
        with torch.no_grad():
            self.optimizer.step_(self.params, grads)

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(M, N, p) logits for operand pairs ``x`` (N, 2)."""
        with sdpa_kernel(SDPBackend.MATH):
            logits: torch.Tensor = self._logits(self.params, x)
        return logits

    @torch.no_grad()
    def metrics(
        self, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor
    ) -> torch.Tensor:
        """(M, len(METRICS)) float32, computed as ModularTrainer.evaluate does."""
        train_logits, val_logits = self.logits(x_train), self.logits(x_val)
        n_models = len(train_logits)
        train_target = y_train.expand(n_models, -1)[..., None]
        val_target = y_val.expand(n_models, -1)[..., None]
        train_losses = -train_logits.log_softmax(-1).gather(-1, train_target)[..., 0]
        val_log_probs = val_logits.log_softmax(-1)
        val_probs = val_log_probs.exp()
        squares = torch.stack([param.pow(2).flatten(1).sum(1) for param in self.params.values()])
        columns = {
            "train_loss": train_losses.mean(1),
            "train_acc": (train_logits.argmax(-1) == y_train).float().mean(1),
            "val_loss": -val_log_probs.gather(-1, val_target).mean((1, 2)),
            "val_acc": (val_logits.argmax(-1) == y_val).float().mean(1),
            "weight_norm": squares.sum(0).sqrt(),
            "val_confidence": val_probs.amax(-1).mean(1),
            "val_correct_prob": val_probs.gather(-1, val_target).mean((1, 2)),
            "zero_loss_share": (train_losses == 0).float().mean(1),
        }
        return torch.stack([columns[name] for name in METRICS], dim=1)


# The transformer's many small matmuls (3×3 attention scores per pair and head) ran at about a
# third of the MLP's multiply-add rate on CPU (5.1 vs 0.71 ms per model-step at p=23).
TRANSFORMER_SLOWDOWN = 2.8


def model_step_cost(arch: str, p: int, embed_dim: int, hidden_dim: int, n_train: int) -> float:
    """Rough cost of one model's full-batch step, in MLP multiply-adds (forward + backward ≈ 3
    forwards), to weigh the progress bar's ETA across chunks of different sizes and archs."""
    if arch == "mlp":
        return 3.0 * n_train * (2 * embed_dim * hidden_dim + hidden_dim * p)
    # Three positions through attention (4 E² for the projections) and the feed-forward.
    per_pair = 3 * (4 * embed_dim**2 + 2 * embed_dim * hidden_dim) + embed_dim * p
    return 3.0 * n_train * per_pair * TRANSFORMER_SLOWDOWN
