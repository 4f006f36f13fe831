"""The DeepSpeed trainer's configuration: one flat, validated dataclass, and the DeepSpeed JSON.

Flat because it comes from a Tune ``param_space`` (task keys sit next to it and are ignored here).
Everything that can be checked without hardware is checked on construction, in the Tune function,
before a worker group is asked for: a bad sweep point then fails in milliseconds with the numbers
in the message instead of after a placement group, a JIT build and ``deepspeed.initialize``.
What needs the device (bf16 support, memory) is checked by ``check_hardware`` on each worker.

``deepspeed_config`` (a JSON path or a dict) is the user's own DeepSpeed JSON, merged the way the
HF Trainer merges one (``transformers.integrations.deepspeed.HfTrainerDeepSpeedConfig``): the keys
the trainer owns (``OWNED``: batch sizes, accumulation, clipping, ZeRO stage, bf16/fp16, the
optimizer and its lr/betas/eps/weight decay) are filled from the trainer's fields where the JSON
says ``"auto"`` or leaves them out, and a value set on both sides that disagrees is a
``ValueError`` naming both. Everything else (``offload_*``, ``stage3_*`` tuning, communication,
``zero_optimization`` extras) goes to ``deepspeed.initialize`` untouched. A ``scheduler`` block is
checked against ``lr_schedule``/``warmup_steps``/``max_steps``/``min_lr_ratio`` and then dropped:
the loop writes lr itself every step (``lr_at``) so kicks compose with the schedule.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from grokschedule.training.deepspeed.task import Task

ZERO_STAGES = (0, 1, 2, 3)
PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine", "linear")
TASKS = ("modular", "lm")
GIB = 1024**3
ADAM_EPS = 1e-8  # not a trainer field: a user JSON's eps is used as given
AUTO = "auto"


@dataclass(frozen=True)
class TrainerConfig:
    """One DeepSpeed training run. ``batch_size`` is the global batch per optimizer step:
    ``micro_batch_size × num_workers × gradient accumulation``."""

    task: str = "modular"
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    zero_stage: int = 0
    precision: str = "fp32"
    batch_size: int = 64
    micro_batch_size: int = 16
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.98
    momentum: float = 0.9
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # 0 disables clipping
    activation_checkpointing: bool = False
    fused_adam: bool | None = None  # None: FusedAdam on CUDA, torch's AdamW elsewhere
    max_steps: int = 1_000
    eval_every: int = 50
    eval_batch_size: int = 512
    checkpoint_every: int = 500  # steps; 0 disables checkpoints
    num_to_keep: int = 2
    poll_every: int = 10  # steps between polls of the command source
    # Scheduled model probes (trainer_probes.TrainerProbes), read at reports: None for none.
    probe_every: int | None = None
    probe_budget: float = 0.01  # probes' share of training time at most
    control: bool = False  # poll the live control channel (grokschedule.adapters.control_channel)
    seed: int = 0
    torch_threads: int = 1
    memory_limit_gb: float | None = None  # per worker; None: the device's own capacity
    max_failures: int = 0  # worker-group failures Train retries from the last checkpoint
    controller_failure_limit: int = 1  # worker groups that may fail to start (Ray's default: ∞)
    worker_start_timeout_s: float = 60.0
    # The user's own DeepSpeed JSON: a path or a dict, merged as the module docstring says.
    deepspeed_config: str | Path | dict[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        def choose(name: str, allowed: tuple[Any, ...]) -> None:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

        choose("task", TASKS)
        choose("zero_stage", ZERO_STAGES)
        choose("precision", PRECISIONS)
        choose("optimizer", OPTIMIZERS)
        choose("lr_schedule", LR_SCHEDULES)
        for name in ("num_workers", "batch_size", "micro_batch_size", "max_steps", "eval_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be an int > 0, got {getattr(self, name)!r}")
        for name in ("eval_batch_size", "num_to_keep", "poll_every", "torch_threads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("warmup_steps", "checkpoint_every", "max_failures", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.probe_every is not None and (
            not isinstance(self.probe_every, int) or self.probe_every <= 0
        ):
            raise ValueError(f"probe_every must be an int > 0 or None, got {self.probe_every!r}")
        if not (isinstance(self.probe_budget, int | float) and 0.0 < self.probe_budget <= 1.0):
            raise ValueError(f"probe_budget must be in (0, 1], got {self.probe_budget!r}")
        if self.checkpoint_every % self.eval_every:
            raise ValueError(
                f"checkpoint_every {self.checkpoint_every} must be a multiple of eval_every "
                f"{self.eval_every}: a checkpoint is reported with the metrics"
            )
        if self.controller_failure_limit < 0:
            raise ValueError(
                f"controller_failure_limit must be >= 0 (bounded retries), "
                f"got {self.controller_failure_limit}"
            )
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(
                f"need lr > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}"
            )
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1 and 0 <= self.momentum < 1):
            raise ValueError(
                f"beta1, beta2 and momentum must be in [0, 1), "
                f"got {self.beta1}, {self.beta2}, {self.momentum}"
            )
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.cpus_per_worker <= 0 or (self.use_gpu and self.gpus_per_worker <= 0):
            raise ValueError(
                f"cpus_per_worker (and gpus_per_worker with use_gpu) must be > 0, "
                f"got {self.cpus_per_worker}, {self.gpus_per_worker}"
            )
        if self.worker_start_timeout_s <= 0:
            raise ValueError(
                f"worker_start_timeout_s must be > 0, got {self.worker_start_timeout_s}"
            )
        if self.memory_limit_gb is not None and self.memory_limit_gb <= 0:
            raise ValueError(f"memory_limit_gb must be > 0 or None, got {self.memory_limit_gb}")
        per_step = self.micro_batch_size * self.num_workers
        if self.batch_size % per_step:
            raise ValueError(
                f"batch_size {self.batch_size} is not divisible by micro_batch_size "
                f"{self.micro_batch_size} × num_workers {self.num_workers} = {per_step}; "
                f"nearest valid: {max(per_step, self.batch_size // per_step * per_step)} "
                f"or {(self.batch_size // per_step + 1) * per_step}"
            )
        if self.precision == "fp16" and not self.use_gpu:
            raise ValueError("precision 'fp16' needs use_gpu=True: DeepSpeed has no CPU fp16 path")
        if self.fused_adam and not self.use_gpu:
            raise ValueError("fused_adam=True needs use_gpu=True: FusedAdam is a CUDA kernel")
        user = None
        if self.deepspeed_config is not None:
            user = check_user_config(self, load_user_config(self.deepspeed_config))
        object.__setattr__(self, "_user", user)  # loaded once: workers need not see the file

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> TrainerConfig:
        """Build from a Tune config, ignoring the keys that belong to the task or to Tune."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in known})

    @property
    def user_deepspeed_config(self) -> dict[str, Any] | None:
        """The user's DeepSpeed JSON as loaded and checked (a copy), or None."""
        return copy.deepcopy(self._user)  # type: ignore[attr-defined]

    @property
    def offloaded(self) -> frozenset[str]:
        """What the user's JSON offloads from the device: ``"param"``, ``"optimizer"``."""
        zero = (self._user or {}).get("zero_optimization", {})  # type: ignore[attr-defined]
        return frozenset(kind for kind in ("param", "optimizer") if _offload_device(zero, kind))

    @property
    def accumulation_steps(self) -> int:
        return self.batch_size // (self.micro_batch_size * self.num_workers)

    @property
    def resources_per_worker(self) -> dict[str, float]:
        resources = {"CPU": self.cpus_per_worker}
        if self.use_gpu:
            resources["GPU"] = self.gpus_per_worker
        return resources

    @property
    def dtype(self) -> torch.dtype:
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[
            self.precision
        ]


def use_fused_adam(config: TrainerConfig) -> bool:
    return config.fused_adam if config.fused_adam is not None else config.use_gpu


def optimizer_section(config: TrainerConfig, name: str, lr: float | None = None) -> dict[str, Any]:
    """DeepSpeed's ``optimizer`` block for ``name``; SGD is torch's, found by DeepSpeed by name."""
    lr = config.lr if lr is None else lr
    if name == "adamw":
        params = {
            "lr": lr,
            "betas": [config.beta1, config.beta2],
            "eps": ADAM_EPS,
            "weight_decay": config.weight_decay,
            "torch_adam": not use_fused_adam(config),
        }
        return {"type": "AdamW", "params": params}
    if name == "sgd":
        params = {"lr": lr, "momentum": config.momentum, "weight_decay": config.weight_decay}
        return {"type": "SGD", "params": params}
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def trainer_deepspeed_config(
    config: TrainerConfig, optimizer: str | None = None, batch_size: int | None = None
) -> dict[str, Any]:
    """The DeepSpeed JSON the trainer's own fields make, before a user JSON is merged in."""
    batch = config.batch_size if batch_size is None else batch_size
    zero: dict[str, Any] = {"stage": config.zero_stage}
    if config.zero_stage >= 2:
        zero.update(overlap_comm=config.use_gpu, contiguous_gradients=True)
    return {
        "train_batch_size": batch,
        "train_micro_batch_size_per_gpu": config.micro_batch_size,
        "gradient_accumulation_steps": batch // (config.micro_batch_size * config.num_workers),
        "gradient_clipping": config.grad_clip,
        "optimizer": optimizer_section(config, optimizer or config.optimizer),
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # torch's SGD under ZeRO
        "bf16": {"enabled": config.precision == "bf16"},
        "fp16": {"enabled": config.precision == "fp16", "initial_scale_power": 16},
        # Rollback points and the sgd_switch home live in node-local scratch (engine.py).
        "checkpoint": {"use_node_local_storage": True},
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
    }


def deepspeed_config(
    config: TrainerConfig, optimizer: str | None = None, batch_size: int | None = None
) -> dict[str, Any]:
    """The DeepSpeed JSON for ``config``, the user's ``deepspeed_config`` merged in;
    ``optimizer``/``batch_size`` override it for a rebuilt engine (SGD switch, raised LoRA rank)
    so the rebuild keeps the batch a kick set. An SGD switch takes the trainer's SGD block: the
    user's optimizer params belong to the home optimizer.

    No DeepSpeed LR scheduler: the loop writes lr itself every step (``lr_at``), so kicks
    compose multiplicatively with the schedule and revert bit for bit.
    """
    base = trainer_deepspeed_config(config, optimizer, batch_size)
    user = config._user  # type: ignore[attr-defined]
    if user is None:
        return base
    return _merge(base, user, home=(optimizer or config.optimizer) == config.optimizer)


def _merge(base: dict[str, Any], user: Mapping[str, Any], home: bool) -> dict[str, Any]:
    """``user`` over ``base``, the keys the trainer owns kept from ``base``, its scheduler
    dropped, its optimizer params only on the ``home`` optimizer."""
    merged = _deep_merge(base, {k: v for k, v in user.items() if k != "scheduler"})
    if not home:
        merged["optimizer"] = copy.deepcopy(base["optimizer"])
    for path in OWNED:
        ours = _get(base, path)
        if ours is not _MISSING:
            _set(merged, path, ours)
    for path in FILL_ONLY:
        if _get(merged, path) == AUTO:
            _set(merged, path, _get(base, path))
    return merged


# -- the user's DeepSpeed JSON ---------------------------------------------------------------
# DeepSpeed key -> the trainer field it comes from. "auto" or absent: filled from the field;
# set to another value: ValueError. As transformers' trainer_config_process does for HF.
OWNED: dict[str, str] = {
    "train_batch_size": "batch_size",
    "train_micro_batch_size_per_gpu": "micro_batch_size",
    "gradient_accumulation_steps": "batch_size / (micro_batch_size × num_workers)",
    "gradient_clipping": "grad_clip",
    "zero_optimization.stage": "zero_stage",
    "bf16.enabled": "precision",
    "fp16.enabled": "precision",
    "optimizer.type": "optimizer",
    "optimizer.params.lr": "lr",
    "optimizer.params.weight_decay": "weight_decay",
    "optimizer.params.betas": "[beta1, beta2]",
    "optimizer.params.momentum": "momentum",
    "optimizer.params.torch_adam": "fused_adam",
    "checkpoint.use_node_local_storage": "the trainer's node-local rollback scratch",
}
FILL_ONLY = ("optimizer.params.eps",)  # "auto" or absent: the trainer's; else the user's
# DeepSpeed's schedulers, as the trainer's lr_schedule they correspond to.
SCHEDULERS = {"WarmupLR": "constant", "WarmupDecayLR": "linear", "WarmupCosineLR": "cosine"}
_SECTIONS = ("optimizer", "scheduler", "zero_optimization", "bf16", "fp16", "checkpoint")
_MISSING = object()


def _get(tree: Mapping[str, Any], path: str) -> Any:
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = copy.deepcopy(value)


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _agrees(theirs: Any, ours: Any) -> bool:
    if isinstance(ours, str):
        return isinstance(theirs, str) and theirs.casefold() == ours.casefold()
    if isinstance(ours, list | tuple):
        return (
            isinstance(theirs, list | tuple)
            and len(theirs) == len(ours)
            and all(_agrees(t, o) for t, o in zip(theirs, ours, strict=True))
        )
    if isinstance(ours, bool) or isinstance(theirs, bool):
        return theirs is ours
    if isinstance(ours, int | float) and isinstance(theirs, int | float):
        return math.isclose(theirs, ours, rel_tol=1e-9, abs_tol=1e-15)
    return bool(theirs == ours)


def load_user_config(value: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """The user's DeepSpeed JSON from a path or a dict, as a fresh dict."""
    if isinstance(value, Mapping):
        data: Any = copy.deepcopy(dict(value))
    elif isinstance(value, str | Path):
        try:
            text = Path(value).read_text()
        except OSError as error:
            raise ValueError(f"deepspeed_config {str(value)!r} cannot be read: {error}") from error
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"deepspeed_config {str(value)!r} is not JSON: {error}") from error
    else:
        raise ValueError(
            f"deepspeed_config must be a JSON file path, a dict or None, got {type(value).__name__}"
        )
    if not isinstance(data, dict):
        raise ValueError(f"deepspeed_config must hold a JSON object, got {type(data).__name__}")
    if "bfloat16" in data:  # DeepSpeed's alias for the bf16 section
        if "bf16" in data:
            raise ValueError("deepspeed_config has both 'bf16' and its alias 'bfloat16'")
        data["bf16"] = data.pop("bfloat16")
    for path in (*_SECTIONS, "optimizer.params", "scheduler.params"):
        section = _get(data, path)
        if section is not _MISSING and not isinstance(section, Mapping):
            raise ValueError(f"deepspeed_config {path} must be an object, got {section!r}")
    return data


def _trainer_side(config: TrainerConfig, path: str, value: Any) -> str:
    """The trainer's side of a disagreement, with its numbers."""
    name = OWNED[path]
    if path == "gradient_accumulation_steps":
        return (
            f"{name} = {config.batch_size} / ({config.micro_batch_size} × {config.num_workers})"
            f" = {value}"
        )
    if path == "optimizer.params.betas":
        return f"{name} = {value!r}"
    if hasattr(config, name):
        own = getattr(config, name)
        return f"{name}={own!r}" + ("" if _agrees(own, value) else f" (so {path}={value!r})")
    return f"{name} (needs {value!r})"


def _owned_problems(config: TrainerConfig, user: Mapping[str, Any]) -> list[str]:
    base = trainer_deepspeed_config(config)
    problems = []
    for path in OWNED:
        ours, theirs = _get(base, path), _get(user, path)
        if theirs is _MISSING or theirs == AUTO:
            continue
        if ours is _MISSING:  # SGD's momentum under AdamW, AdamW's betas under SGD
            problems.append(f"{path}={theirs!r} has no place with optimizer={config.optimizer!r}")
        elif not _agrees(theirs, ours):
            problems.append(f"{path}={theirs!r} vs {_trainer_side(config, path, ours)}")
    return problems


def _scheduler_problems(config: TrainerConfig, scheduler: Mapping[str, Any]) -> list[str]:
    """A user ``scheduler`` block must describe the trainer's own schedule (it is not run)."""
    kind = {schedule: name for name, schedule in SCHEDULERS.items()}[config.lr_schedule]
    given = scheduler.get("type", AUTO)
    if given != AUTO and given not in SCHEDULERS:
        return [
            f"scheduler.type={given!r} has no trainer equivalent: lr_schedule 'constant', "
            f"'linear' and 'cosine' are {', '.join(SCHEDULERS)}"
        ]
    if given not in (AUTO, kind):
        return [f"scheduler.type={given!r} vs lr_schedule={config.lr_schedule!r} ({kind})"]
    problems = []
    floor = config.min_lr_ratio * config.lr
    values: dict[str, tuple[str, Any]] = {
        "warmup_num_steps": ("warmup_steps", config.warmup_steps),
        "warmup_type": ("the trainer's linear warmup", "linear"),
    }
    if kind == "WarmupLR":
        values["warmup_max_lr"] = ("lr", config.lr)
        values["warmup_min_lr"] = ("the trainer's warmup from 0", 0.0)
    elif kind == "WarmupDecayLR":
        values["warmup_max_lr"] = ("lr", config.lr)
        values["warmup_min_lr"] = ("min_lr_ratio × lr", floor)
        values["total_num_steps"] = ("max_steps", config.max_steps)
    else:
        values["cos_min_ratio"] = ("min_lr_ratio", config.min_lr_ratio)
        values["warmup_min_ratio"] = ("the trainer's warmup from 0", 0.0)
        values["total_num_steps"] = ("max_steps", config.max_steps)
    for name, theirs in scheduler.get("params", {}).items():
        if name not in values:
            problems.append(
                f"scheduler.params.{name} is not among the {kind} settings the trainer "
                f"runs ({', '.join(values)})"
            )
        elif theirs != AUTO and not _agrees(theirs, values[name][1]):
            field_name, ours = values[name]
            problems.append(f"scheduler.params.{name}={theirs!r} vs {field_name}={ours!r}")
    return problems


def _offload_device(zero: Mapping[str, Any], kind: str) -> str | None:
    """The device ``zero_optimization`` offloads ``kind`` (param, optimizer) to, or None."""
    section = zero.get(f"offload_{kind}")
    if isinstance(section, Mapping):
        device = section.get("device", "none")
    elif zero.get("cpu_offload_param" if kind == "param" else "cpu_offload"):  # deprecated
        device = "cpu"
    else:
        return None
    return None if device in (None, "none", AUTO) else str(device)


def _zero_problems(config: TrainerConfig, zero: Mapping[str, Any]) -> list[str]:
    """ZeRO/offload combinations DeepSpeed's config model accepts but cannot run."""
    stage, problems = config.zero_stage, []
    param, optimizer = _offload_device(zero, "param"), _offload_device(zero, "optimizer")
    if param is not None and stage < 3:
        problems.append(
            f"zero_optimization.offload_param (device {param!r}) needs zero_stage 3, got "
            f"{stage}: only stage 3 partitions the parameters it would offload"
        )
    if optimizer is not None and stage == 0:
        problems.append(
            f"zero_optimization.offload_optimizer (device {optimizer!r}) needs zero_stage 1, 2 "
            f"or 3, got 0: stage 0 keeps no partitioned optimizer state to offload"
        )
    for kind, device in (("param", param), ("optimizer", optimizer)):
        section = zero.get(f"offload_{kind}")
        if device == "nvme" and not (isinstance(section, Mapping) and section.get("nvme_path")):
            problems.append(
                f"zero_optimization.offload_{kind} device 'nvme' needs nvme_path "
                "(a directory on the NVMe drive)"
            )
    return problems


def _auto_problems(user: Mapping[str, Any]) -> list[str]:
    """'auto' where nothing fills it. DeepSpeed's own config models (zero_optimization, bf16,
    ...) read 'auto' as their default, so only plain keys and optimizer params are checked."""
    places = {k: v for k, v in user.items() if not isinstance(v, Mapping)}
    params = _get(user, "optimizer.params")
    if isinstance(params, Mapping):
        places.update({f"optimizer.params.{k}": v for k, v in params.items()})
    return [
        f"{path}='auto' is not a key the trainer fills (batch sizes, accumulation, clipping, "
        "ZeRO stage, bf16/fp16, the optimizer's type, lr, betas, eps, weight decay, momentum)"
        for path, value in places.items()
        if value == AUTO and path not in OWNED and path not in FILL_ONLY
    ]


def check_user_config(config: TrainerConfig, user: dict[str, Any]) -> dict[str, Any]:
    """``ValueError`` naming every key of ``user`` that contradicts ``config``, every impossible
    ZeRO/offload combination and whatever DeepSpeed's own config model refuses; ``user``
    otherwise. Runs without a process group or accelerator: DeepSpeed's ``DeepSpeedConfig``
    sees world size 1 off a worker, so it gets the batch split per rank and the batch arithmetic
    across ``num_workers`` stays the trainer's own check."""
    conflicts = _owned_problems(config, user)
    conflicts += _scheduler_problems(config, user.get("scheduler", {}))
    problems = _zero_problems(config, user.get("zero_optimization", {})) + _auto_problems(user)
    if conflicts or problems:
        hint = ". Set those DeepSpeed keys to 'auto' (the trainer fills them) or change the fields"
        raise ValueError(
            "deepspeed_config: " + "; ".join(conflicts + problems) + (hint if conflicts else "")
        )
    probe = _merge(trainer_deepspeed_config(config), user, home=True)
    probe.pop("train_batch_size")  # = micro × accumulation × world size 1, off a worker
    import deepspeed
    from deepspeed.runtime.config import DeepSpeedConfig

    try:
        DeepSpeedConfig(probe)
    except (ValueError, AssertionError, TypeError, KeyError) as error:  # pydantic's is a ValueError
        detail = " ".join(str(error).split("For further information")[0].split())
        raise ValueError(
            f"deepspeed_config is refused by DeepSpeed {deepspeed.__version__}'s config model: "
            f"{detail}"
        ) from error
    return user


def lr_at(config: TrainerConfig, step: int) -> float:
    """The scheduled lr for optimizer step ``step`` (0-based): linear warmup, then constant,
    cosine or linear decay to ``min_lr_ratio × lr`` at ``max_steps``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return config.lr
    span = max(1, config.max_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    if config.lr_schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        shape = 1.0 - progress
    return config.lr * (config.min_lr_ratio + (1.0 - config.min_lr_ratio) * shape)


def model_state_bytes(
    n_params: int, n_trainable: int, config: TrainerConfig, world_size: int
) -> int:
    """Bytes per worker that parameters, gradients and optimizer state need under ZeRO.

    The ZeRO paper's accounting (arXiv 1910.02054, §3): weights in the training dtype, gradients
    in the same dtype, optimizer state per trainable param — fp32 master (mixed precision only),
    plus Adam's two moments or SGD's momentum — each divided by the data-parallel world from the
    stage that partitions it (1: optimizer state, 2: + gradients, 3: + weights). Activations are
    not counted: they depend on the batch and sequence and are what ``memory_limit_gb`` headroom
    is for. What the user's ``deepspeed_config`` offloads (``offload_optimizer``: master and
    moments; ``offload_param``: weights) lives in host memory or on NVMe and is not counted.
    """
    width = 4 if config.precision == "fp32" else 2
    moments = 8 if config.optimizer == "adamw" else 4
    master = 0 if config.precision == "fp32" else 4
    stage = config.zero_stage
    weights = n_params * width / (world_size if stage >= 3 else 1)
    grads = n_trainable * width / (world_size if stage >= 2 else 1)
    state = n_trainable * (moments + master) / (world_size if stage >= 1 else 1)
    if "optimizer" in config.offloaded:
        state = 0
    if "param" in config.offloaded:
        weights = 0
    return int(weights + grads + state)


def device_memory_bytes(use_gpu: bool) -> tuple[int, str]:
    """What one worker may use, and what it is, for error messages."""
    if use_gpu:
        properties = torch.cuda.get_device_properties(torch.cuda.current_device())
        return int(properties.total_memory), f"{properties.name} memory"
    import psutil

    return int(psutil.virtual_memory().available), "available host memory"


def check_hardware(config: TrainerConfig) -> None:
    """Raise ``ValueError`` if this worker cannot run ``config``'s precision at all."""
    if not config.use_gpu:
        return
    if not torch.cuda.is_available():
        raise ValueError("use_gpu=True but this worker sees no CUDA device")
    major, minor = torch.cuda.get_device_capability()
    if config.precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ValueError(
            f"precision 'bf16' needs compute capability >= 8.0 (Ampere); "
            f"{torch.cuda.get_device_name()} has {major}.{minor}: use precision 'fp16'"
        )


def check_fits(
    n_params: int, n_trainable: int, config: TrainerConfig, world_size: int, memory: int, what: str
) -> None:
    """Raise ``ValueError`` when the model state alone exceeds the worker's memory budget."""
    need = model_state_bytes(n_params, n_trainable, config, world_size)
    budget = memory if config.memory_limit_gb is None else int(config.memory_limit_gb * GIB)
    source = what if config.memory_limit_gb is None else "memory_limit_gb"
    if need > budget:
        raise ValueError(
            f"model does not fit: {n_params:,} params ({n_trainable:,} trainable) need "
            f"{need / GIB:.2f} GiB per worker for weights, gradients and {config.optimizer} state "
            f"under ZeRO-{config.zero_stage} {config.precision} on {world_size} workers, but "
            f"{source} is {budget / GIB:.2f} GiB; raise zero_stage, num_workers or the budget"
        )


def check_task(config: TrainerConfig, task: Task) -> None:
    """What needs the task and its model: ``ValueError`` for an empty training or evaluation
    split, or a LoRA rank above a layer it adapts. Called by the driver before workers start;
    the model is built on the meta device, so it costs no memory."""
    cfg = getattr(task, "config", None)
    prefix = "lm_" if task.name == "lm" else ""
    sizes = {"train": len(task.train_split()[0])}
    sizes.update({name: len(inputs) for name, (inputs, _) in task.eval_splits().items()})
    empty = [name for name, size in sizes.items() if size == 0]
    if empty:
        knobs = [
            f"{prefix}{name}={getattr(cfg, name)!r}"
            for name in ("op", "p", "train_fraction")
            if getattr(cfg, name, None) is not None
        ]
        raise ValueError(
            f"task {task.name!r}: the {' and '.join(map(repr, empty))} set is empty after the "
            f"split ({', '.join(f'{k} {v}' for k, v in sizes.items())} examples) with "
            f"{', '.join(knobs)}; lower {prefix}train_fraction or raise {prefix}p"
        )
    if getattr(task, "adapter_rank", None) is not None:
        with torch.device("meta"):
            model = task.build_model()
        check_adapter_ranks(model, f"{prefix}lora_rank")


def adapter_rank_limit(model: nn.Module) -> int | None:
    """The largest LoRA rank every adapted linear layer of ``model`` allows (``min(in, out)``
    of the narrowest), or None without an adapter; a lora_rank kick must stay within it."""
    sizes = []
    for module in model.modules():
        ranks, base = getattr(module, "r", None), getattr(module, "base_layer", None)
        if isinstance(ranks, Mapping) and hasattr(base, "in_features"):
            sizes.append(min(base.in_features, base.out_features))
    return min(sizes) if sizes else None


def check_adapter_ranks(model: nn.Module, what: str = "LoRA rank") -> None:
    """``ValueError`` if a LoRA adapter's rank exceeds ``min(in, out)`` of the linear layer it
    adapts: past that the update ``B @ A`` has no more rank to gain, only more parameters."""
    layers = []
    for name, module in model.named_modules():
        ranks, base = getattr(module, "r", None), getattr(module, "base_layer", None)
        if not isinstance(ranks, Mapping) or not hasattr(base, "in_features"):
            continue
        size = min(base.in_features, base.out_features)
        layers += [(size, name, base, rank) for rank in ranks.values()]
    too_big = [layer for layer in layers if layer[3] > layer[0]]
    if too_big:
        size, name, base, rank = min(too_big, key=lambda layer: layer[0])
        raise ValueError(
            f"{what} {rank} is larger than the layer it adapts: {name} maps "
            f"{base.in_features} → {base.out_features}, min(in, out) = {size}; "
            f"use {what} <= {min(layer[0] for layer in layers)}"
        )


_ARCH = re.compile(r"^(\d+)\.(\d+)[a-z]?(\+PTX)?$")


def cuda_arch_list_for_deepspeed(value: str) -> str:
    """``TORCH_CUDA_ARCH_LIST`` without arch-specific suffixes (``9.0a`` → ``9.0``).

    DeepSpeed 0.19.8's JIT builder parses each entry with ``int()`` and fails on ``9.0a``
    ("invalid literal for int() ... '0a'"), which NGC and many cluster images set for Hopper.
    Its ops (FusedAdam, ...) use no ``sm_90a``-only instructions, so plain ``9.0`` is equivalent.
    """
    entries = [e for e in value.replace(" ", ";").split(";") if e]
    cleaned = []
    for entry in entries:
        match = _ARCH.match(entry)
        if match is None:
            raise ValueError(f"TORCH_CUDA_ARCH_LIST entry {entry!r} is not like '9.0' or '9.0a'")
        cleaned.append(f"{match[1]}.{match[2]}{match[3] or ''}")
    return ";".join(dict.fromkeys(cleaned))


def prepare_cuda_build_env() -> None:
    """Apply ``cuda_arch_list_for_deepspeed`` to this process before DeepSpeed JIT-builds."""
    value = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if value:
        os.environ["TORCH_CUDA_ARCH_LIST"] = cuda_arch_list_for_deepspeed(value)
