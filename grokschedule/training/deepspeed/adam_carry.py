"""AdamW's state carried across a LoRA rank growth (``DeepSpeedRun.set_adapter_rank``).

The grown engine is a new engine: without this its AdamW starts at step 0 with zero moments, so
its first updates are about ``lr`` per element (bias correction divides a tiny first moment by
a tiny second one) and undo the fit the kick was meant to keep. ``read`` takes each trainable
parameter's whole moments (``exp_avg``, ``exp_avg_sq``) and the base optimizer's step count
before the old engine goes; ``write`` seeds the new engine's optimizer state with that step
count and the moments grown like the weights (``LMTask.load_grown``): the old ones in the
leading slice (the old rows of A, columns of B). The new rows and columns are new weights with
no history: zero momentum, and as second moment the old one's mean along the rank dimension.
A zero second moment would not do with the step count carried: bias correction assumes each
moment started at step 0, so a new element's first updates would be 3-6 × lr (measured: the
new columns of B moved 1.8 lr in 3 steps, against 1.2 lr with the mean).

Moments are read and written through DeepSpeed's tensor-fragment API
(``safe_get/set_full_optimizer_state``) where a parameter has a ``_hp_mapping`` (ZeRO-1/2, and
bf16 at ZeRO-0) and straight from the torch optimizer's state where the parameter is its own
master (ZeRO-0 fp32). Both collect every rank's partition, so all ranks call them together. An
optimizer with neither (ZeRO-0 fp16's flat master copies) carries nothing: ``read`` returns None
and the grown engine starts afresh, as it did before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from deepspeed.utils import safe_get_full_optimizer_state, safe_set_full_optimizer_state
from torch import nn

MOMENTS = ("exp_avg", "exp_avg_sq")
SPREAD = {"exp_avg": False, "exp_avg_sq": True}


@dataclass
class CarriedAdam:
    """What ``write`` puts into the grown engine's optimizer."""

    moments: dict[str, dict[str, torch.Tensor]]  # parameter name -> moment -> whole tensor
    counters: list[dict[str, Any]]  # per param group: the non-moment state (``step``)
    group_steps: list[Any]  # per param group: ``group["step"]`` (DeepSpeed's FusedAdam), or None


def base_optimizer(engine: Any) -> torch.optim.Optimizer:
    """The torch optimizer that holds the state: the ZeRO/bf16 wrapper's, or the engine's own."""
    optimizer = engine.optimizer
    return getattr(optimizer, "optimizer", optimizer)  # type: ignore[no-any-return]


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def _whole(engine: Any, param: nn.Parameter, key: str) -> torch.Tensor | None:
    if hasattr(param, "_hp_mapping"):
        value = safe_get_full_optimizer_state(param, key)
        return None if value is None else value.detach().float().cpu().clone()
    state = engine.optimizer.state.get(param)  # the parameter is its own master (ZeRO-0 fp32)
    return None if state is None or key not in state else state[key].detach().float().cpu().clone()


def _link_fragments(wrapper: Any, again: bool = False) -> None:
    """Make each parameter's ``_hp_mapping`` see the base optimizer's state (ZeRO-1/2, bf16),
    which DeepSpeed does only after a step; ``again`` after that state was replaced."""
    if hasattr(wrapper, "_hp_optimizer_states_linked"):
        if again:
            wrapper._hp_optimizer_states_linked = False
        wrapper._lazy_init_hp_params_optimizer_state()


def read(engine: Any) -> CarriedAdam | None:
    """The moments and step count of ``engine``'s AdamW; None before its first step or where
    they cannot be mapped back to parameters (module docstring)."""
    base = base_optimizer(engine)
    if not base.state:
        return None
    _link_fragments(engine.optimizer)  # a loaded checkpoint's state is linked only at a step
    named = _trainable(engine.module)
    if not all(hasattr(p, "_hp_mapping") or p in engine.optimizer.state for _, p in named):
        return None
    moments: dict[str, dict[str, torch.Tensor]] = {}
    for name, param in named:
        values = {key: _whole(engine, param, key) for key in MOMENTS}
        if any(v is None for v in values.values()):
            return None
        moments[name] = values  # type: ignore[assignment]
    counters = []
    for group in base.param_groups:
        state = base.state[group["params"][0]]
        shape = group["params"][0].shape
        counters.append(
            {
                k: v.clone() if torch.is_tensor(v) else v
                for k, v in state.items()
                if not (torch.is_tensor(v) and v.shape == shape)
            }
        )
    return CarriedAdam(moments, counters, [group.get("step") for group in base.param_groups])


def grown(old: torch.Tensor, shape: torch.Size, spread: bool) -> torch.Tensor:
    """``old`` in the leading slice of a tensor of ``shape`` (A's rows, B's columns), the new
    slice zero, or with ``spread`` the mean of ``old`` along the grown dimension."""
    dims = [d for d, (o, n) in enumerate(zip(old.shape, shape, strict=True)) if o != n]
    if not dims:
        return old.clone()
    if len(dims) > 1 or old.shape[dims[0]] > shape[dims[0]]:
        raise ValueError(f"cannot grow {tuple(old.shape)} into {tuple(shape)}")
    if spread:
        new = old.mean(dims[0], keepdim=True).expand(shape).clone()
    else:
        new = torch.zeros(shape, dtype=old.dtype)
    new.narrow(dims[0], 0, old.shape[dims[0]]).copy_(old)
    return new


def write(engine: Any, carried: CarriedAdam) -> None:
    """Seed ``engine`` (just built, no step taken) with ``carried``, its moments grown to the
    new shapes."""
    base = base_optimizer(engine)
    if len(base.param_groups) != len(carried.counters):
        raise ValueError(
            f"the grown engine has {len(base.param_groups)} param groups, "
            f"the old one had {len(carried.counters)}"
        )
    for group, counters, step in zip(
        base.param_groups, carried.counters, carried.group_steps, strict=True
    ):
        for flat in group["params"]:
            zeros = {
                key: torch.zeros_like(flat, memory_format=torch.preserve_format) for key in MOMENTS
            }
            base.state[flat] = {
                **{k: v.clone() if torch.is_tensor(v) else v for k, v in counters.items()},
                **zeros,
            }
        if step is not None:
            group["step"] = step
    _link_fragments(engine.optimizer, again=True)  # point the fragments at the new state
    for name, param in _trainable(engine.module):
        for key, old in carried.moments[name].items():
            value = grown(old, param.shape, SPREAD[key]).to(param.device)
            if hasattr(param, "_hp_mapping"):
                safe_set_full_optimizer_state(param, value, key)
            else:
                engine.optimizer.state[param][key].copy_(value)
