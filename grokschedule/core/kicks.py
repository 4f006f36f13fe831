"""Kicks: the interventions the scheduler may apply to a run stuck on a grokking plateau.

Pure data, free of torch, so the decision core can build, compare, log and pickle kicks without a
model in sight; ``grokschedule.training.kick_applier`` turns them into changes to a live optimizer.
Every kick is validated on construction and its params are stored with defaults filled in, so what a
log or checkpoint holds is exactly what was applied.

Kinds (``duration_steps`` counts optimizer steps; ``None`` keeps the kick for the rest of the run):

- ``lr_multiply``: lr × ``factor``, then restored.
- ``lr_cycle``: one cycle of lr × 1 → ``peak`` → 1 over ``duration_steps`` (cosine, or triangular
  when ``triangular`` = 1), sampled at step midpoints so every step of the window is kicked.
- ``batch_size``: effective batch × ``factor`` (2–4) through gradient accumulation; lr ×
  ``factor ** scale_lr`` (0 keeps lr, 0.5 is the square-root rule for Adam, 1 the linear rule).
- ``sgd_switch``: the optimizer is set aside for SGD with ``lr`` and ``momentum``, then brought
  back with its state untouched (the seed recipe: AdamW at 1e-5 → SGD 1e-4 → AdamW).
- ``weight_decay``: weight decay × ``factor``.
- ``grad_noise``: Gaussian gradient noise, variance ``std² / (1 + t)^gamma`` with t the steps since
  the kick (gamma = 0 constant; 0.55 as in Neelakantan et al. 2015, arXiv 1511.06807).
- ``grokfast``: g ← g + ``lamb`` · EMA_``alpha``(g), amplifying the slow gradient (Grokfast-EMA,
  Lee et al. 2024, arXiv 2405.20233).
- ``ortho_grad``: ⊥Grad, each gradient projected orthogonal to its parameter so it cannot just
  scale the weights up toward softmax collapse (Prieto et al. 2025, arXiv 2501.04697).
- ``lora_rank``: the LoRA adapter's rank × ``factor`` (an integer >= 2, default 4: 8 → 32), alpha
  kept at 2 × rank. LM runs with an adapter only (``lm_lora_rank``): a rank too small to hold
  the general solution is the LoRA-specific cause of a plateau. Permanent (``duration_steps``
  must be None): the grown adapter starts as the old one padded with zeros, so the model
  computes the same function, while shrinking it back would throw away what the new rank
  learned; a rollback undoes it instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

LR_MULTIPLY = "lr_multiply"
LR_CYCLE = "lr_cycle"
BATCH_SIZE = "batch_size"
SGD_SWITCH = "sgd_switch"
WEIGHT_DECAY = "weight_decay"
GRAD_NOISE = "grad_noise"
GROKFAST = "grokfast"
ORTHO_GRAD = "ortho_grad"
LORA_RANK = "lora_rank"
KINDS = (
    LR_MULTIPLY,
    LR_CYCLE,
    BATCH_SIZE,
    SGD_SWITCH,
    WEIGHT_DECAY,
    GRAD_NOISE,
    GROKFAST,
    ORTHO_GRAD,
    LORA_RANK,
)
# Kinds that rewrite lr or weight decay (or swap the optimizer that holds them).
HYPERPARAM_KINDS = frozenset({LR_MULTIPLY, LR_CYCLE, BATCH_SIZE, SGD_SWITCH, WEIGHT_DECAY})
# Kinds that transform gradients between backward and step, in the order they are applied:
# Grokfast's EMA sees the clean gradient, and ⊥Grad comes last so the step stays orthogonal.
GRAD_TRANSFORMS = (GROKFAST, GRAD_NOISE, ORTHO_GRAD)


@dataclass(frozen=True)
class _Param:
    default: float | None  # None: the caller must give it
    valid: Callable[[float], bool]
    allowed: str


_POSITIVE = _Param(None, lambda v: v > 0, "a number > 0")
_SPECS: dict[str, dict[str, _Param]] = {
    LR_MULTIPLY: {"factor": _POSITIVE},
    LR_CYCLE: {
        "peak": _POSITIVE,
        "triangular": _Param(0.0, lambda v: v in (0, 1), "0 (cosine) or 1 (triangular)"),
    },
    BATCH_SIZE: {
        "factor": _Param(None, lambda v: v in (2, 3, 4), "2, 3 or 4"),
        "scale_lr": _Param(0.0, lambda v: 0 <= v <= 1, "in [0, 1] (0.5 sqrt rule, 1 linear)"),
    },
    SGD_SWITCH: {"lr": _POSITIVE, "momentum": _Param(0.9, lambda v: 0 <= v < 1, "in [0, 1)")},
    WEIGHT_DECAY: {"factor": _POSITIVE},
    GRAD_NOISE: {"std": _POSITIVE, "gamma": _Param(0.0, lambda v: v >= 0, ">= 0")},
    GROKFAST: {
        "alpha": _Param(0.98, lambda v: 0 < v < 1, "in (0, 1)"),
        "lamb": _Param(2.0, lambda v: v > 0, "> 0"),
    },
    ORTHO_GRAD: {},
    LORA_RANK: {"factor": _Param(4.0, lambda v: v >= 2 and v == int(v), "an integer >= 2")},
}
# A cycle needs a length and the SGD window must end, or AdamW would never come back.
_NEEDS_DURATION = frozenset({LR_CYCLE, SGD_SWITCH})
# A grown adapter cannot shrink back without changing the function (module docstring).
_PERMANENT = frozenset({LORA_RANK})


@dataclass(frozen=True)
class Kick:
    """One intervention; see the module docstring for each kind's params."""

    kind: str
    params: dict[str, float] = field(default_factory=dict)
    duration_steps: int | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if self.kind not in _SPECS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        spec = _SPECS[self.kind]
        unknown = sorted(set(self.params) - set(spec))
        if unknown:
            raise ValueError(f"params {unknown} unknown for {self.kind}; allowed: {sorted(spec)}")
        params: dict[str, float] = {}
        for name, rule in spec.items():
            value = self.params.get(name, rule.default)
            if value is None:
                raise ValueError(f"params[{name!r}] is required for {self.kind}: {rule.allowed}")
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not (ok and math.isfinite(value) and rule.valid(value)):
                raise ValueError(
                    f"params[{name!r}] for {self.kind} must be {rule.allowed}, got {value!r}"
                )
            params[name] = float(value)
        # A private copy: the caller's dict can neither change nor bypass the validated one.
        object.__setattr__(self, "params", params)
        duration = self.duration_steps
        if duration is not None and self.kind in _PERMANENT:
            raise ValueError(
                f"duration_steps must be None for {self.kind} (permanent: shrinking the grown "
                f"adapter back would change the function), got {duration!r}"
            )
        if duration is None:
            if self.kind in _NEEDS_DURATION:
                raise ValueError(f"duration_steps is required for {self.kind}: an int > 0")
        elif isinstance(duration, bool) or not isinstance(duration, int) or duration <= 0:
            raise ValueError(
                f"duration_steps must be an int > 0 or None (rest of the run), got {duration!r}"
            )
        if not isinstance(self.reason, str):
            raise ValueError(f"reason must be a str, got {self.reason!r}")

    def __hash__(self) -> int:
        # Explicit because the generated hash would fail on the params dict; lets the scheduler
        # keep sets of kicks it has already tried.
        params = tuple(sorted(self.params.items()))
        return hash((self.kind, params, self.duration_steps, self.reason))

    def lr_factor(self, elapsed: int) -> float:
        """What this kick multiplies the base lr by, ``elapsed`` steps after it took effect."""
        if self.kind == LR_MULTIPLY:
            return self.params["factor"]
        if self.kind == BATCH_SIZE:
            return math.pow(self.params["factor"], self.params["scale_lr"])
        if self.kind == LR_CYCLE:
            assert self.duration_steps is not None  # enforced in __post_init__
            phase = (elapsed + 0.5) / self.duration_steps
            if self.params["triangular"]:
                rise = 1.0 - abs(2.0 * phase - 1.0)
            else:
                rise = (1.0 - math.cos(2.0 * math.pi * phase)) / 2.0
            return 1.0 + (self.params["peak"] - 1.0) * rise
        return 1.0

    def wd_factor(self) -> float:
        """What this kick multiplies the base weight decay by."""
        return self.params["factor"] if self.kind == WEIGHT_DECAY else 1.0

    def rank_after(self, rank: int) -> int:
        """The LoRA rank this kick leaves an adapter of ``rank`` with."""
        return rank * int(self.params["factor"]) if self.kind == LORA_RANK else rank

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form; ``Kick.from_dict`` inverts it exactly."""
        return {
            "kind": self.kind,
            "params": dict(self.params),
            "duration_steps": self.duration_steps,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Kick:
        allowed = ("kind", "params", "duration_steps", "reason")
        unknown = sorted(set(data) - set(allowed))
        if unknown or "kind" not in data:
            raise ValueError(
                f"a kick dict needs 'kind' and only keys {allowed}; got {sorted(data)}"
            )
        return cls(
            data["kind"],
            dict(data.get("params") or {}),
            data.get("duration_steps"),
            data.get("reason", ""),
        )


@dataclass(frozen=True)
class ActiveKick:
    """A kick in force since optimizer step ``start``."""

    kick: Kick
    start: int

    @property
    def end(self) -> int | None:
        """The first step no longer under the kick; ``None`` while it lasts for the whole run."""
        duration = self.kick.duration_steps
        return None if duration is None else self.start + duration


def value_changes(
    before: Mapping[str, Any], after: Mapping[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """``{key: (old, new)}`` for every value of ``before`` that ``after`` holds differently."""
    return {key: (before[key], after[key]) for key in before if before[key] != after[key]}


@dataclass(frozen=True)
class KickRecord:
    """What applying or reverting a kick did, for the scheduler and the logs.

    ``step`` is the first optimizer step that runs under the new values; ``changes`` maps each
    value that changed (``optimizer``, ``lr`` and ``weight_decay`` per param group,
    ``accumulation_steps``, ``grad_transforms``) to ``(old, new)``.
    """

    step: int
    action: str  # "apply" or "revert"
    kick: Kick
    changes: dict[str, tuple[Any, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "action": self.action,
            "kick": self.kick.to_dict(),
            "changes": {name: list(change) for name, change in self.changes.items()},
        }
