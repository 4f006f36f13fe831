"""Apply kicks (``grokschedule.core.kicks``) to a live torch training loop, in place, between steps.

``step`` is the index of the optimizer step being taken. A loop drives the applier like this::

    record = applier.apply(kick, step)          # between steps, when the scheduler says so
    optimizer = applier.optimizer               # the live one: an sgd_switch swaps it
    optimizer.zero_grad(set_to_none=True)
    for micro_batch in split(batch, applier.accumulation_steps):
        (loss_fn(micro_batch) / applier.accumulation_steps).backward()
    applier.before_step(step)                   # Grokfast, gradient noise, ⊥Grad
    optimizer.step()
    records = applier.after_step(step)          # expired kicks reverted, next lr written

While any kick touches lr or weight decay the applier owns them: for every step it writes
``base × Π factors`` into each param group, ``base`` being what the groups held before the first
such kick, and when the last one ends it writes ``base`` back bit for bit. Products rather than
save-and-restore per kick, so overlapping kicks that end in any order still restore exactly.

Checkpoints: save the optimizer passed in (the home one, never ``applier.optimizer``) as usual,
plus ``applier.state_dict()``, which holds the kicks in force and what they carry, including the
temporary SGD of an sgd_switch. Restore the model and home optimizer, then ``load_state_dict``.

The lr/wd functions work on anything with torch's ``param_groups`` layout, DeepSpeed's
``engine.optimizer`` included, so an adapter can reuse them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from grokschedule.core.kicks import (
    BATCH_SIZE,
    GRAD_NOISE,
    GRAD_TRANSFORMS,
    GROKFAST,
    HYPERPARAM_KINDS,
    LORA_RANK,
    ORTHO_GRAD,
    SGD_SWITCH,
    ActiveKick,
    Kick,
    KickRecord,
    value_changes,
)

# (name, params, lr, weight_decay) -> optimizer; ``training.modular.trainer.make_optimizer`` fits.
OptimizerFactory = Callable[[str, Any, float, float], torch.optim.Optimizer]


class HasParamGroups(Protocol):
    """A torch optimizer, or anything laid out like one (DeepSpeed's ``engine.optimizer``)."""

    param_groups: list[dict[str, Any]]


def read_hyperparams(optimizer: HasParamGroups) -> list[tuple[float, float]]:
    """``(lr, weight_decay)`` of each param group."""
    return [(float(g["lr"]), float(g["weight_decay"])) for g in optimizer.param_groups]


def write_hyperparams(
    optimizer: HasParamGroups,
    base: Sequence[tuple[float, float]],
    lr_factor: float = 1.0,
    wd_factor: float = 1.0,
) -> None:
    """Set each group's lr and weight decay to its ``base`` pair times the factors."""
    for group, (lr, wd) in zip(optimizer.param_groups, base, strict=True):
        _set(group, "lr", lr * lr_factor)
        _set(group, "weight_decay", wd * wd_factor)


def _set(group: dict[str, Any], key: str, value: float) -> None:
    # Capturable and fused optimizers may hold a tensor lr that must be updated in place.
    if isinstance(group[key], torch.Tensor):
        group[key].fill_(value)
    else:
        group[key] = value


@torch.no_grad()
def grokfast_ema_(
    params: Sequence[torch.Tensor], ema: dict[int, torch.Tensor], alpha: float, lamb: float
) -> None:
    """Grokfast-EMA (Lee et al. 2024, arXiv 2405.20233, Algorithm 2) on ``.grad``, in place.

    ``ema ← alpha·ema + (1 − alpha)·g``, then ``g ← g + lamb·ema``: the EMA is a low-pass filter
    over steps, and amplifying the slow component it keeps is what shortens the plateau. ``ema``
    is keyed by position in ``params`` and starts at the first gradient, as in the authors' code.
    """
    for i, p in enumerate(params):
        if p.grad is None:
            continue
        if i in ema:
            ema[i].mul_(alpha).add_(p.grad, alpha=1.0 - alpha)
        else:
            ema[i] = p.grad.detach().clone()
        p.grad.add_(ema[i], alpha=lamb)


@torch.no_grad()
def ortho_grad_(params: Iterable[torch.Tensor], eps: float = 1e-30) -> None:
    """⊥Grad (Prieto et al. 2025, arXiv 2501.04697) on ``.grad``, in place.

    Drops each gradient's component along its own parameter, ``g − (w·g / w·w)·w``, so the loss
    can no longer fall by merely scaling the weights up (the road to softmax collapse that stalls
    grokking), then rescales to ``‖g‖`` as the authors' code does, so the step size is kept.
    """
    for p in params:
        if p.grad is None:
            continue
        w, g = p.detach().flatten().float(), p.grad.flatten().float()
        orth = g - (w @ g) / (w @ w + eps) * w
        orth.mul_(g.norm() / (orth.norm() + eps))
        p.grad.copy_(orth.view_as(p.grad))


def _torch_sgd(name: str, params: Any, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The default factory; the applier only ever asks for ``"sgd"``."""
    if name != "sgd":
        raise ValueError(f"the default factory builds only 'sgd', got {name!r}")
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)


class KickApplier:
    """Applies kicks to one model and the optimizer that trains it; see the module docstring.

    ``make_optimizer`` builds the SGD of an sgd_switch from the home optimizer's param groups
    (torch's SGD by default); the SGD's momentum is set on its groups afterwards.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        make_optimizer: OptimizerFactory | None = None,
    ) -> None:
        self._params = list(model.parameters())
        self._home = optimizer
        self._make_optimizer = make_optimizer or _torch_sgd
        self._switched: torch.optim.Optimizer | None = None
        self._active: dict[str, ActiveKick] = {}
        self._base: list[tuple[float, float]] | None = None  # home (lr, wd) before the kicks
        self._ema: dict[int, torch.Tensor] = {}
        self._generators: dict[str, torch.Generator] = {}

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The optimizer to step now: the SGD during an sgd_switch, else the one passed in."""
        return self._home if self._switched is None else self._switched

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches per optimizer step the loop must accumulate (batch_size kick)."""
        batch = self._active.get(BATCH_SIZE)
        return 1 if batch is None else int(batch.kick.params["factor"])

    @property
    def active(self) -> tuple[ActiveKick, ...]:
        """The kicks in force, in the order they were applied."""
        return tuple(self._active.values())

    def apply(self, kick: Kick, step: int) -> KickRecord:
        """Put ``kick`` in force from optimizer step ``step``; call between steps.

        A kick of a kind already in force replaces it from ``step`` on; what it carries (a
        Grokfast EMA, the noise RNG) carries over, and ``base`` stays what it was before either.
        A ``lora_rank`` kick is refused: it changes the model, not the optimizer.
        """
        if kick.kind == LORA_RANK:
            raise ValueError(
                "lora_rank needs a model with a LoRA adapter that the trainer can rebuild at a "
                "larger rank (the DeepSpeed trainer's LM task, lm_lora_rank); this trainer "
                "applies kicks to its optimizer in place and cannot"
            )
        before = self._snapshot()
        if kick.kind in HYPERPARAM_KINDS and self._base is None:
            self._base = read_hyperparams(self._home)
        self._active.pop(kick.kind, None)
        self._active[kick.kind] = ActiveKick(kick, step)
        if kick.kind == SGD_SWITCH:
            self._switched = self._build_sgd(kick)
        self._refresh(step)
        return KickRecord(step, "apply", kick, value_changes(before, self._snapshot()))

    def before_step(self, step: int) -> None:
        """Transform gradients between backward and ``optimizer.step()``: Grokfast, then noise,
        then ⊥Grad (``kicks.GRAD_TRANSFORMS``)."""
        if GROKFAST in self._active:
            params = self._active[GROKFAST].kick.params
            grokfast_ema_(self._params, self._ema, params["alpha"], params["lamb"])
        if GRAD_NOISE in self._active:
            self._add_noise(self._active[GRAD_NOISE], step)
        if ORTHO_GRAD in self._active:
            ortho_grad_(self._params)

    def after_step(self, step: int) -> list[KickRecord]:
        """Call right after ``optimizer.step()``: reverts the kicks whose window ended with
        ``step`` and writes the lr and weight decay for ``step + 1``."""
        records = []
        for active in list(self._active.values()):
            if active.end is not None and active.end <= step + 1:
                before = self._snapshot()
                self._revert(active.kick.kind)
                self._refresh(step + 1)
                changes = value_changes(before, self._snapshot())
                records.append(KickRecord(step + 1, "revert", active.kick, changes))
        self._refresh(step + 1)
        return records

    def state_dict(self) -> dict[str, Any]:
        """Kicks in force and what they carry; tensors are shared, as in ``Module.state_dict``."""
        return {
            "active": [{"kick": a.kick.to_dict(), "start": a.start} for a in self._active.values()],
            "base": self._base,
            "grokfast_ema": dict(self._ema),
            "noise_rng": {device: g.get_state() for device, g in self._generators.items()},
            "switched_optimizer": None if self._switched is None else self._switched.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()``; call once the model and the home optimizer are restored."""
        self._active = {}
        for entry in state["active"]:
            kick = Kick.from_dict(entry["kick"])
            self._active[kick.kind] = ActiveKick(kick, int(entry["start"]))
        base = state["base"]
        self._base = None if base is None else [(float(lr), float(wd)) for lr, wd in base]
        self._ema = {
            int(i): ema.to(self._params[int(i)].device, copy=True)
            for i, ema in state["grokfast_ema"].items()
        }
        self._generators = {}
        for device, rng in state["noise_rng"].items():
            self._generators[device] = torch.Generator(device)
            self._generators[device].set_state(rng.cpu())
        self._switched = None
        if state["switched_optimizer"] is not None:
            self._switched = self._build_sgd(self._active[SGD_SWITCH].kick)
            self._switched.load_state_dict(state["switched_optimizer"])

    def _revert(self, kind: str) -> None:
        del self._active[kind]
        if kind == SGD_SWITCH:
            self._switched = None  # the home optimizer, its state untouched, is live again
        elif kind == GROKFAST:
            self._ema.clear()
        elif kind == GRAD_NOISE:
            self._generators.clear()

    def _refresh(self, step: int) -> None:
        """Write lr and weight decay for ``step``; the base itself once no kick touches them."""
        if self._base is None:
            return
        kicks = [a for a in self._active.values() if a.kick.kind in HYPERPARAM_KINDS]
        lr_factor = math.prod(a.kick.lr_factor(step - a.start) for a in kicks)
        wd_factor = math.prod(a.kick.wd_factor() for a in kicks)
        # The home optimizer is written even while set aside, so it comes back with right values.
        write_hyperparams(self._home, self._base, lr_factor, wd_factor)
        if self._switched is not None:
            lr = self._active[SGD_SWITCH].kick.params["lr"]
            sgd_base = [(lr, wd) for _, wd in self._base]
            write_hyperparams(self._switched, sgd_base, lr_factor, wd_factor)
        if not kicks:
            self._base = None

    def _build_sgd(self, kick: Kick) -> torch.optim.Optimizer:
        """A fresh SGD over the home optimizer's param groups; ``_refresh`` then writes each
        group's lr and weight decay. The home optimizer is only set aside, so its state (AdamW's
        moments and step count) is exactly what it was when it comes back."""
        assert self._base is not None  # set by apply/load_state_dict for every sgd_switch
        groups = [{"params": group["params"]} for group in self._home.param_groups]
        sgd = self._make_optimizer("sgd", groups, kick.params["lr"], self._base[0][1])
        for group in sgd.param_groups:
            group["momentum"] = kick.params["momentum"]
        return sgd

    @torch.no_grad()
    def _add_noise(self, active: ActiveKick, step: int) -> None:
        params = active.kick.params
        elapsed = max(step - active.start, 0)
        std = params["std"] * math.pow(1 + elapsed, -params["gamma"] / 2)
        for p in self._params:
            if p.grad is None:
                continue
            generator = self._generator(p.device, active.start)
            noise = torch.randn(
                p.grad.shape, generator=generator, device=p.device, dtype=p.grad.dtype
            )
            p.grad.add_(noise, alpha=std)

    def _generator(self, device: torch.device, start: int) -> torch.Generator:
        """A generator per device, so noise neither draws from nor shifts the training RNG;
        seeded from the run's seed and the kick's start, so reruns match but trials differ."""
        key = str(device)
        if key not in self._generators:
            seed = (torch.initial_seed() + start) % 2**63
            self._generators[key] = torch.Generator(device).manual_seed(seed)
        return self._generators[key]

    def _snapshot(self) -> dict[str, Any]:
        hyperparams = read_hyperparams(self.optimizer)
        return {
            "optimizer": type(self.optimizer).__name__,
            "lr": tuple(lr for lr, _ in hyperparams),
            "weight_decay": tuple(wd for _, wd in hyperparams),
            "accumulation_steps": self.accumulation_steps,
            "grad_transforms": tuple(kind for kind in GRAD_TRANSFORMS if kind in self._active),
        }
