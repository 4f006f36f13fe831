"""The DeepSpeed trainer's configuration: one flat, validated dataclass, and the DeepSpeed JSON.

Flat because it comes from a Tune ``param_space`` (task keys sit next to it and are ignored here).
Everything that can be checked without hardware is checked on construction, in the Tune function,
before a worker group is asked for: a bad sweep point then fails in milliseconds with the numbers
in the message instead of after a placement group, a JIT build and ``deepspeed.initialize``.
What needs the device (bf16 support, memory) is checked by ``check_hardware`` on each worker.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

ZERO_STAGES = (0, 1, 2, 3)
PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine", "linear")
TASKS = ("modular", "lm")
GIB = 1024**3


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
    control: bool = False  # poll the live control channel (grokschedule.adapters.control_channel)
    seed: int = 0
    torch_threads: int = 1
    memory_limit_gb: float | None = None  # per worker; None: the device's own capacity
    max_failures: int = 0  # worker-group failures Train retries from the last checkpoint
    controller_failure_limit: int = 1  # worker groups that may fail to start (Ray's default: ∞)
    worker_start_timeout_s: float = 60.0

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

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> TrainerConfig:
        """Build from a Tune config, ignoring the keys that belong to the task or to Tune."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in known})

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
            "eps": 1e-8,
            "weight_decay": config.weight_decay,
            "torch_adam": not use_fused_adam(config),
        }
        return {"type": "AdamW", "params": params}
    if name == "sgd":
        params = {"lr": lr, "momentum": config.momentum, "weight_decay": config.weight_decay}
        return {"type": "SGD", "params": params}
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def deepspeed_config(
    config: TrainerConfig, optimizer: str | None = None, batch_size: int | None = None
) -> dict[str, Any]:
    """The DeepSpeed JSON for ``config``; ``optimizer``/``batch_size`` override it for a rebuilt
    engine (SGD switch, raised LoRA rank) so the rebuild keeps the batch a kick set.

    No DeepSpeed LR scheduler: the loop writes lr itself every step (``lr_at``), so kicks
    compose multiplicatively with the schedule and revert bit for bit.
    """
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
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
    }


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
    is for.
    """
    width = 4 if config.precision == "fp32" else 2
    moments = 8 if config.optimizer == "adamw" else 4
    master = 0 if config.precision == "fp32" else 4
    stage = config.zero_stage
    weights = n_params * width / (world_size if stage >= 3 else 1)
    grads = n_trainable * width / (world_size if stage >= 2 else 1)
    state = n_trainable * (moments + master) / (world_size if stage >= 1 else 1)
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
