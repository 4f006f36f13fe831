"""One worker's DeepSpeed run: the engine, its step, exact metrics, kicks and checkpoints.

Free of Ray so it can be driven and tested in one process; ``loop.py`` puts it under Ray Train.
Every method that runs a collective (step, evaluate, weight_norm, save, kicks that rebuild the
engine) must be called by all ranks in the same order — the loop guarantees that by deciding
everything (when to evaluate, which commands to apply) from the step count or a broadcast.

Kicks (``grokschedule.core.kicks``) on a DeepSpeed engine, and why each is done the way it is:

- lr and weight decay (``lr_multiply``, ``lr_cycle``, ``weight_decay``): written in place into
  ``engine.optimizer.param_groups`` before every step as ``schedule(step) × Π factors``. The loop
  owns the schedule (no DeepSpeed LR scheduler), so a kick composes with it and reverts exactly.
- ``batch_size``: ``engine.set_train_batch_size(base × factor)`` — gradient accumulation, in
  place. The loop marks accumulation boundaries itself, so a change mid-run cannot misalign them.
- ``sgd_switch``: under ZeRO the optimizer state *is* the sharded fp32 master weights plus
  moments, owned by the ZeRO wrapper, so there is no correct in-place swap. The engine is saved
  (``home``), rebuilt with SGD and loaded with ``load_optimizer_states=False`` (fresh momentum,
  current weights). At the end of the window the engine is rebuilt with the home optimizer, loads
  ``home`` with its optimizer state (AdamW moments and step count untouched), then the SGD
  engine's weights with ``load_module_only=True``, which re-derives the fp32 master from them.
  Under bf16/fp16 the master is rounded to the training dtype at each switch. A checkpoint
  inside the window holds the SGD engine and a copy of ``home`` (``SWITCH_DIR``), so a restarted
  worker finishes the window and switches back to the same AdamW state.
- ``lora_rank``: the engine is rebuilt around the task at rank × factor, its adapter loaded with
  the old factors padded with zeros (``LMTask.load_grown``), so the loss is what it was; AdamW's
  moments and step count are carried into the new engine, grown the same way (``adam_carry``:
  the new rows of A and columns of B get zero momentum and the old mean second moment), as a
  fresh AdamW (step 0, zero moments) makes its first updates about ``lr`` per element and
  wrecks the fit the kick was to keep (LM demo: train exact match 0.98 → 0.52 in 80 steps). The
  moments go through ``safe_get/set_full_optimizer_state`` (ZeRO-0 fp16's flat master copies
  cannot be mapped back: there the optimizer starts afresh). ZeRO-0/1/2 only (whole weights), not
  inside an sgd_switch window. Permanent, and not a kick in force (``control/kicks_active``
  leaves it out): the adapter's rank is the state, saved as ``adapter_rank``, so a restart
  rebuilds at the grown rank. A configured rank above a checkpoint's (a kick by restart,
  ``lm_lora_rank`` × factor) grows the restored adapter; a smaller one cannot shrink it.
- gradient transforms (``grad_noise``, ``grokfast``, ``ortho_grad``) are refused: ZeRO reduces and
  partitions gradients inside ``backward``, so there is no whole gradient to transform.

Commands from the live control channel (``grokschedule.core.commands.Command``) carry ids and
are acknowledged in ``control``. Before a channel kick the run saves a rollback point — a DeepSpeed
checkpoint in node-local scratch plus the kicks in force — and a ``rollback`` command loads it
into a freshly built engine (the optimizer in force at the point, its moments included; the
adapter at the point's rank, so a rollback undoes a ``lora_rank`` kick). As in
the modular trainer the step counter is not rolled back (Tune's time attribute must stay
monotone); the windows of the restored kicks move by the steps rolled back. A pending rollback
point is copied into every checkpoint, so it survives a worker restart — with the ``home`` of
the sgd_switch window it was taken in, if any (``POINT_SWITCH_DIR`` unless that is the window
still in force, whose ``home`` the checkpoint holds anyway).

Checkpoints load with ``torch.load(weights_only=True)``. DeepSpeed 0.19.8's own
``TorchCheckpointEngine.load`` passes ``weights_only=False`` and has no setting to change it, so
every engine gets ``WeightsOnlyCheckpointEngine`` instead; the few DeepSpeed classes its ZeRO
optimizer states pickle (``DEEPSPEED_CHECKPOINT_CLASSES``) are allowlisted with
``torch.serialization.add_safe_globals``. Anything else pickled in a checkpoint is refused
(``grokschedule.training.checkpoints.UnsafeCheckpointError``).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address
from torch import nn

from grokschedule.core.commands import KICK, ControlState
from grokschedule.core.commands import Command as ChannelCommand
from grokschedule.core.contract import GRAD_TRANSFORMS
from grokschedule.core.kicks import (
    BATCH_SIZE,
    HYPERPARAM_KINDS,
    LORA_RANK,
    SGD_SWITCH,
    ActiveKick,
    Kick,
    KickRecord,
    value_changes,
)
from grokschedule.training.checkpoints import load_tensors, seal_rank
from grokschedule.training.deepspeed import adam_carry
from grokschedule.training.deepspeed.config import (
    TrainerConfig,
    adapter_rank_limit,
    check_adapter_ranks,
    check_fits,
    deepspeed_config,
    device_memory_bytes,
    lr_at,
)
from grokschedule.training.deepspeed.task import ExampleStats, Task
from grokschedule.training.kick_applier import read_hyperparams, write_hyperparams

logger = logging.getLogger(__name__)

TAG = "checkpoint"  # DeepSpeed tag inside every checkpoint directory
ROLLBACK_TAG = "rollback"  # the rollback point's tag, and its directory inside a checkpoint
HOME_TAG = "home"  # the optimizer set aside by an sgd_switch, in its switch directory
SWITCH_DIR = "switch"  # inside a checkpoint: the home of the sgd_switch window in force
POINT_SWITCH_DIR = "rollback_switch"  # inside a checkpoint: the rollback point's own home
STATE_FILE = "trainer_state.json"
# The kicks a DeepSpeed engine can take; see the module docstring.
ENGINE_KINDS = HYPERPARAM_KINDS | {LORA_RANK}
# What DeepSpeed 0.19.8 pickles into ZeRO optimizer states besides tensors: the first, third and
# fourth found with torch.serialization.get_unsafe_globals_in_checkpoint on stages 0-3, fp32 and
# bf16, AdamW and SGD (CPU); DynamicLossScaler is fp16's loss scaler in LossScaler's place (its
# state is numbers and a dtype; fp16 needs a GPU, so no checkpoint of it was made here).
DEEPSPEED_CHECKPOINT_CLASSES = [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]
torch.serialization.add_safe_globals(DEEPSPEED_CHECKPOINT_CLASSES)


class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine, loading with ``weights_only=True``."""

    def load(self, path: str, map_location: Any = None) -> Any:
        return load_tensors(Path(path), map_location=map_location)


@dataclass(frozen=True)
class SetAdapterRank:
    """A command: rebuild with a larger LoRA rank (e.g. 8 → 32 on a plateau); LM task only."""

    rank: int
    reason: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"rank must be an int > 0, got {self.rank!r}")


EngineCommand = Kick | SetAdapterRank | ChannelCommand


@dataclass(frozen=True)
class RollbackPoint:
    """Where a rollback returns to: the engine saved under ``ROLLBACK_TAG`` in ``directory``
    (node-local scratch) and the run state beside it. ``switch_dir`` is the sgd_switch home
    checkpoint in force then, kept alive while the point may need it."""

    directory: Path
    state: dict[str, Any]
    switch_dir: Path | None


class Meter:
    """Sums of per-example training statistics since the last report, on this rank. They stay
    on the device until ``reduce``: a ``.cpu()`` per micro-batch would stall a GPU every time."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)

    def add(self, stats: ExampleStats) -> None:
        self.sums[0] += stats.loss.detach().double().sum()
        self.sums[1] += stats.correct.sum()
        self.sums[2] += stats.zero_loss.sum()
        self.sums[3] += len(stats.loss)

    def reduce(self) -> dict[str, float]:
        """Mean over every example every rank trained on since the last call; resets."""
        total = all_reduce_sum(self.sums, self.device)
        self.sums.zero_()
        loss, correct, zero, count = total.tolist()
        count = max(count, 1.0)
        return {
            "train_loss": loss / count,
            "train_acc": correct / count,
            "grok/zero_loss_share": zero / count,
        }


def all_reduce_sum(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Sum over ranks, as a new CPU tensor: a caller may reset ``values`` right after (``Meter``
    does; on CPU ``.to``/``.cpu`` would hand back ``values`` itself, zeroed with it). Reduced on
    the comm device (NCCL cannot reduce CPU tensors)."""
    values = values.to(device, copy=True)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values)
    return values.cpu()


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sample_indices(n: int, size: int, seed: int, step: int, rank: int, micro: int) -> torch.Tensor:
    """Training indices for one micro-batch: a pure function of where the run is, so a restored
    or rebuilt run draws exactly the batches it would have drawn, with no sampler state to save."""
    mixed = ((seed * 1_000_003 + step) * 1_009 + rank) * 101 + micro
    generator = torch.Generator().manual_seed(mixed % (2**63))
    return torch.randint(n, (size,), generator=generator)


class DeepSpeedRun:
    """The engine and its control state on one worker.

    ``step`` counts optimizer steps taken. ``commands`` applied between steps come from
    ``apply``; ``after_step`` reverts kicks whose window ended.
    """

    def __init__(
        self,
        config: TrainerConfig,
        task: Task,
        device: torch.device,
        state: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.task = task
        self.device = device
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world_size = dist.get_world_size() if dist.is_initialized() else 1
        if self.world_size != config.num_workers:
            raise ValueError(
                f"num_workers is {config.num_workers} but the process group has "
                f"{self.world_size} ranks; the batch split depends on it"
            )
        self.step = 0
        self.active: dict[str, ActiveKick] = {}
        self.meter = Meter(device)
        self.engine_builds = 0
        self.control = ControlState()
        self._rollback: RollbackPoint | None = None
        self._switch_dir: Path | None = None
        self._x_train, self._y_train = task.train_split()
        if state is not None:
            self.step = int(state["step"])
            for entry in state["active"]:
                kick = Kick.from_dict(entry["kick"])
                self.active[kick.kind] = ActiveKick(kick, int(entry["start"]))
            if state.get("adapter_rank") is not None:
                self.task = self.task.with_adapter_rank(int(state["adapter_rank"]))  # type: ignore[attr-defined]
            self.control = ControlState(**state.get("control", {}))
        self.engine = self._build_engine(self.optimizer_name, self._model())
        self.local_rank = int(self.engine.local_rank)  # rank on this node: who writes scratch
        self._write_hyperparams()

    # -- engine ------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        """The global batch per optimizer step, with a batch_size kick in force."""
        batch = self.active.get(BATCH_SIZE)
        factor = 1 if batch is None else int(batch.kick.params["factor"])
        return self.config.batch_size * factor

    @property
    def optimizer_name(self) -> str:
        return "sgd" if SGD_SWITCH in self.active else self.config.optimizer

    def _model(self) -> nn.Module:
        torch.manual_seed(self.config.seed)  # identical init on every rank
        return self.task.build_model()

    def _build_engine(self, optimizer: str, model: nn.Module) -> Any:
        n_params = sum(p.numel() for p in model.parameters())
        n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        memory, what = device_memory_bytes(self.config.use_gpu)
        check_fits(n_params, n_trainable, self.config, self.world_size, memory, what)
        config = deepspeed_config(self.config, optimizer, self.batch_size)
        if self.config.precision != "fp32":
            model = model.to(self.config.dtype)
        params = [p for p in model.parameters() if p.requires_grad]
        engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=config)
        if type(engine.checkpoint_engine) is TorchCheckpointEngine:  # the default; see docstring
            engine.checkpoint_engine = WeightsOnlyCheckpointEngine(engine._config)
        self.engine_builds += 1
        self._base_wd = [wd for _, wd in read_hyperparams(engine.optimizer)]
        return engine

    def _release_engine(self) -> None:
        """Free the engine's memory before its replacement is built (matters on a GPU)."""
        self.engine.destroy()
        del self.engine
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _write_hyperparams(self) -> None:
        """lr and weight decay for the coming step: schedule × the kicks in force."""
        kicks = [a for a in self.active.values() if a.kick.kind in HYPERPARAM_KINDS]
        lr_factor = math.prod(a.kick.lr_factor(self.step - a.start) for a in kicks)
        wd_factor = math.prod(a.kick.wd_factor() for a in kicks)
        sgd = self.active.get(SGD_SWITCH)
        base_lr = sgd.kick.params["lr"] if sgd else lr_at(self.config, self.step)
        base = [(base_lr, wd) for wd in self._base_wd]
        write_hyperparams(self.engine.optimizer, base, lr_factor, wd_factor)
        if sgd is not None:
            for group in self.engine.optimizer.param_groups:
                group["momentum"] = sgd.kick.params["momentum"]

    @property
    def lr(self) -> float:
        return float(self.engine.optimizer.param_groups[0]["lr"])

    # -- training ----------------------------------------------------------------------------
    def train_step(self) -> None:
        """One optimizer step over ``batch_size`` examples, split into micro-batches."""
        engine = self.engine
        engine.train()
        accumulation = engine.gradient_accumulation_steps()
        for micro in range(accumulation):
            index = sample_indices(
                len(self._x_train),
                self.config.micro_batch_size,
                self.config.seed,
                self.step,
                self.rank,
                micro,
            )
            inputs, targets = self._x_train[index], self._y_train[index]
            engine.set_gradient_accumulation_boundary(micro == accumulation - 1)
            stats = self.task.stats(engine, inputs.to(self.device), targets.to(self.device))
            engine.backward(stats.loss.mean())
            self.meter.add(stats)
        engine.step()
        self.step += 1

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        """Loss, accuracy and correct-class probability over the *whole* split: each rank takes
        a contiguous shard and the sums are all-reduced. Every rank runs the same number of
        forwards (an uncounted one where its shard ran out) because ZeRO-3 gathers weights
        collectively. A task whose stats carry token sums (``ExampleStats``) also gets
        ``token_loss`` (mean over answer tokens), ``confidence`` and ``conf_correct`` /
        ``conf_wrong`` (mean confidence on examples answered right / wrong, when there are any)."""
        inputs, targets = self.task.eval_splits()[split]
        self.engine.eval()
        shard = torch.arange(len(inputs)).tensor_split(self.world_size)[self.rank]
        size = self.config.eval_batch_size
        chunks = math.ceil(math.ceil(len(inputs) / self.world_size) / size)
        sums = torch.zeros(9, dtype=torch.float64, device=self.device)
        tokens_reported = False
        for chunk in range(chunks):
            index = shard[chunk * size : (chunk + 1) * size]
            if len(index) == 0:
                stats = self.task.stats(
                    self.engine, inputs[:1].to(self.device), targets[:1].to(self.device)
                )
                tokens_reported = stats.token_loss is not None
                continue
            stats = self.task.stats(
                self.engine, inputs[index].to(self.device), targets[index].to(self.device)
            )
            sums[0] += stats.loss.double().sum()
            sums[1] += stats.correct.sum()
            sums[2] += stats.correct_prob.double().sum()
            sums[3] += len(index)
            if stats.token_loss is not None and stats.tokens is not None:
                tokens_reported = True
                sums[4] += stats.token_loss.double().sum()
                sums[5] += stats.tokens.sum()
            if stats.confidence is not None:
                confidence, right = stats.confidence.double(), stats.correct.bool()
                sums[6] += confidence[right].sum()
                sums[7] += confidence[~right].sum()
                sums[8] += confidence.sum()
        loss, correct, prob, count, token_loss, tokens, *conf = all_reduce_sum(
            sums, self.device
        ).tolist()
        result = {"loss": loss / count, "acc": correct / count, "correct_prob": prob / count}
        if tokens_reported:
            result["token_loss"] = token_loss / max(tokens, 1.0)
            result["confidence"] = conf[2] / count
            if correct > 0:
                result["conf_correct"] = conf[0] / correct
            if count - correct > 0:
                result["conf_wrong"] = conf[1] / (count - correct)
        return result

    @torch.no_grad()
    def weight_norm(self) -> float:
        """L2 norm of the trainable weights, exact under ZeRO-3: a partitioned parameter
        contributes its local shard (``ds_tensor``; padding is zeros) and the squared sums are
        all-reduced, so no rank ever holds the whole model. Replicated parameters count once."""
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # sharded, replicated
        for p in self.engine.module.parameters():
            if p.requires_grad:
                shard = getattr(p, "ds_tensor", None)
                tensor, slot = (p, 1) if shard is None else (shard, 0)
                # Per tensor in fp32 (no fp64 copy of a large weight), summed in fp64, on device.
                sums[slot] += torch.linalg.vector_norm(tensor.detach().float()).double().square()
        sharded = float(all_reduce_sum(sums[:1], self.device))
        return math.sqrt(sharded + float(sums[1]))

    # -- kicks and commands ------------------------------------------------------------------
    def apply(self, command: EngineCommand) -> KickRecord | None:
        """Apply a command between optimizer steps; a kick returns its ``KickRecord``."""
        if isinstance(command, ChannelCommand):
            return self.apply_channel_command(command)
        if isinstance(command, SetAdapterRank):
            self.set_adapter_rank(command.rank)
            return None
        return self.apply_kick(command)

    def apply_channel_command(self, command: ChannelCommand) -> KickRecord | None:
        """A control-channel command: a kick behind a fresh rollback point, or a rollback.
        ``ValueError`` for an id not above the last one applied or a rollback with no point."""
        if command.id <= self.control.acked_id:
            raise ValueError(
                f"command {command.id} is not newer than the last one applied "
                f"({self.control.acked_id}); ids must grow per trial"
            )
        record, rollbacks = None, self.control.rollbacks
        if command.type == KICK:
            assert command.kick is not None  # Command guarantees it for kicks
            try:
                self._check_kick(command.kick)  # a refused kick leaves the last point in place
            except ValueError as refused:  # a kind or size this engine cannot take
                logger.warning(
                    "command %d acknowledged as not applied (control/not_applied_id): %s",
                    command.id, refused,
                )  # fmt: skip
                self.control = replace(self.control, acked_id=command.id, not_applied_id=command.id)
                return None
            self._take_rollback_point()
            record = self.apply_kick(command.kick)
        else:
            self.rollback()
            rollbacks += 1
        self.control = replace(
            self.control, acked_id=command.id, applied_step=self.step, rollbacks=rollbacks
        )
        return record

    def control_metrics(self) -> dict[str, int]:
        """The acknowledgements (``ControlState.metrics``), and that this engine cannot take
        gradient-transform kicks, so the kick policy does not send them."""
        return {**self.control.metrics(len(self.active)), GRAD_TRANSFORMS: 0}

    def rollback(self) -> None:
        """Return to the rollback point taken before the latest channel kick (module docstring)."""
        point = self._rollback
        if point is None:
            raise ValueError("rollback: no kick since the last rollback to undo")
        gap = self.step - int(point.state["step"])
        self._release_engine()
        if self._switch_dir not in (None, point.switch_dir):
            self._remove_scratch(self._switch_dir)
        self._switch_dir = point.switch_dir
        self.active = {
            kick.kind: ActiveKick(kick, int(entry["start"]) + gap)
            for entry in point.state["active"]
            for kick in [Kick.from_dict(entry["kick"])]
        }
        if point.state["adapter_rank"] != self.adapter_rank:  # a lora_rank kick since the point
            self.task = self.task.with_adapter_rank(int(point.state["adapter_rank"]))  # type: ignore[attr-defined]
        self.engine = self._build_engine(self.optimizer_name, self._model())
        self.engine.load_checkpoint(str(point.directory), ROLLBACK_TAG)
        self._sync_accumulation()
        self._write_hyperparams()
        self._drop_rollback_point()

    def _take_rollback_point(self) -> None:
        self._drop_rollback_point()
        directory = self._scratch_dir("rollback")
        self._save_engine(directory, ROLLBACK_TAG)
        self._rollback = RollbackPoint(directory, self._run_state(), self._switch_dir)

    def _drop_rollback_point(self) -> None:
        point, self._rollback = self._rollback, None
        if point is None:
            return
        self._remove_scratch(point.directory)
        if point.switch_dir not in (None, self._switch_dir):
            self._remove_scratch(point.switch_dir)

    def _remove_scratch(self, directory: Path | None) -> None:
        if dist.is_initialized():
            dist.barrier()  # every rank of the node is done reading it
        if directory is not None and self.local_rank == 0:
            shutil.rmtree(directory, ignore_errors=True)

    def apply_kick(self, kick: Kick) -> KickRecord:
        """Put ``kick`` in force from the next optimizer step (``self.step``).

        A kick of a kind already in force replaces it from now on.
        """
        self._check_kick(kick)
        before = self._snapshot()
        if kick.kind == LORA_RANK:  # permanent, and the rank is the state: not in ``active``
            assert self.adapter_rank is not None  # _check_kick refuses a model without one
            self.set_adapter_rank(kick.rank_after(self.adapter_rank), "lora_rank kick: rank")
            return KickRecord(self.step, "apply", kick, value_changes(before, self._snapshot()))
        switching = kick.kind == SGD_SWITCH and SGD_SWITCH not in self.active
        if switching:
            self._rebuild_from_checkpoint("sgd")
        self.active.pop(kick.kind, None)
        self.active[kick.kind] = ActiveKick(kick, self.step)
        self.engine.set_train_batch_size(self.batch_size)
        self._sync_accumulation()
        self._write_hyperparams()
        return KickRecord(self.step, "apply", kick, value_changes(before, self._snapshot()))

    def _check_kick(self, kick: Kick) -> None:
        """``ValueError`` for a kick this engine cannot take, before anything is saved or
        released."""
        if kick.kind not in ENGINE_KINDS:
            raise ValueError(
                f"kick {kick.kind!r} cannot be applied to a DeepSpeed engine: ZeRO reduces and "
                f"partitions gradients inside backward; supported: {sorted(ENGINE_KINDS)}"
            )
        if kick.kind != LORA_RANK:
            return
        rank = self.adapter_rank
        if rank is None:
            raise ValueError(
                f"lora_rank needs a model with a LoRA adapter; task {self.task.name!r} has none "
                "(set lm_lora_rank)"
            )
        grown, limit = kick.rank_after(rank), self.adapter_rank_limit
        if limit is not None and grown > limit:
            raise ValueError(
                f"lora_rank kick: rank {rank} × {kick.params['factor']:g} = {grown} is larger than "
                f"the narrowest layer the adapter adapts allows (min(in, out) = {limit})"
            )
        self._check_rank_change(grown, "lora_rank kick")

    def _check_rank_change(self, rank: int, what: str) -> None:
        if not hasattr(self.task, "with_adapter_rank"):
            raise ValueError(f"task {self.task.name!r} has no adapter whose rank could change")
        if self.config.zero_stage == 3:
            raise ValueError(f"{what}: raising the LoRA rank needs whole weights: zero_stage <= 2")
        if SGD_SWITCH in self.active:
            raise ValueError(f"{what}: cannot change the adapter rank inside an sgd_switch window")
        current = self.adapter_rank
        if current is not None and rank < current:
            raise ValueError(f"{what}: the LoRA rank can only grow, {current} → {rank}")

    def after_step(self) -> list[KickRecord]:
        """Call after each ``train_step``: reverts kicks whose window ended and writes the
        hyperparameters for the next step."""
        records = []
        for active in list(self.active.values()):
            if active.end is not None and active.end <= self.step:
                before = self._snapshot()
                del self.active[active.kick.kind]
                if active.kick.kind == SGD_SWITCH:
                    self._switch_back()
                self.engine.set_train_batch_size(self.batch_size)
                self._sync_accumulation()
                self._write_hyperparams()
                changes = value_changes(before, self._snapshot())
                records.append(KickRecord(self.step, "revert", active.kick, changes))
        self._write_hyperparams()
        return records

    @property
    def adapter_rank(self) -> int | None:
        """The LoRA adapter's rank in force; None without an adapter."""
        return getattr(self.task, "adapter_rank", None)

    @property
    def adapter_rank_limit(self) -> int | None:
        """The largest rank the adapted layers allow (``min(in, out)`` of the narrowest)."""
        return adapter_rank_limit(self.engine.module)

    def set_adapter_rank(self, rank: int, what: str = "SetAdapterRank rank") -> None:
        """Rebuild with a LoRA adapter of rank ``rank``, keeping the function the model computes
        (the task pads the adapter with zeros). AdamW's moments and step count are carried
        over (``adam_carry``), grown like the weights: a fresh AdamW's first updates are about
        ``lr`` per element and would undo the fit the kick keeps.
        ``ValueError`` (``what`` names the request) before the running engine is touched."""
        self._check_rank_change(rank, what)
        old_state = {
            k: v.detach().float().cpu() for k, v in self.engine.module.state_dict().items()
        }
        task = self.task.with_adapter_rank(rank)
        model = task.build_model()
        check_adapter_ranks(model, what)  # before the running engine goes
        task.load_grown(model, old_state)
        carried = adam_carry.read(self.engine)
        self._release_engine()
        self.task = task
        self.engine = self._build_engine(self.optimizer_name, model)
        if carried is not None:
            adam_carry.write(self.engine, carried)
        self._write_hyperparams()

    def _sync_accumulation(self) -> None:
        # ZeRO-1/2's CPU-offload path reads its own copy of the accumulation count.
        if hasattr(self.engine.optimizer, "gradient_accumulation_steps"):
            self.engine.optimizer.gradient_accumulation_steps = (
                self.engine.gradient_accumulation_steps()
            )

    def _scratch_dir(self, purpose: str) -> Path:
        """A directory with the same path on every node, so ranks load what their node's local
        rank 0 wrote (``use_node_local_storage``): model weights are written once per node."""
        token = broadcast_object(uuid.uuid4().hex if self.rank == 0 else None)
        return Path(tempfile.gettempdir()) / f"grokschedule-{purpose}" / str(token)

    def _rebuild_from_checkpoint(self, optimizer: str) -> None:
        self._switch_dir = self._scratch_dir("switch")
        self._save_engine(self._switch_dir, HOME_TAG)
        self._release_engine()
        self.engine = self._build_engine(optimizer, self._model())
        self.engine.load_checkpoint(
            str(self._switch_dir),
            HOME_TAG,
            load_optimizer_states=False,
            load_lr_scheduler_states=False,
        )

    def _switch_back(self) -> None:
        assert self._switch_dir is not None  # set by _rebuild_from_checkpoint
        self._save_engine(self._switch_dir, "sgd")
        self._release_engine()
        self.engine = self._build_engine(self.config.optimizer, self._model())
        self.engine.load_checkpoint(str(self._switch_dir), HOME_TAG)
        # Weights only: ZeRO-1/2 re-derive the fp32 master in ``load_module_only``; ZeRO-3 keeps
        # weights in its shards, which DeepSpeed reads (through ``latest``) only without
        # optimizer states. Either way the moments just loaded from ``home`` stay.
        if self.config.zero_stage == 3:
            self.engine.load_checkpoint(str(self._switch_dir), "sgd", load_optimizer_states=False)
        else:
            self.engine.load_checkpoint(str(self._switch_dir), "sgd", load_module_only=True)
        if self._rollback is None or self._rollback.switch_dir != self._switch_dir:
            self._remove_scratch(self._switch_dir)  # else the rollback point still needs it
        self._switch_dir = None

    def _snapshot(self) -> dict[str, Any]:
        hyperparams = read_hyperparams(self.engine.optimizer)
        return {
            "optimizer": self.optimizer_name,
            "lr": tuple(lr for lr, _ in hyperparams),
            "weight_decay": tuple(wd for _, wd in hyperparams),
            "accumulation_steps": self.engine.gradient_accumulation_steps(),
            "batch_size": self.batch_size,
            "lora_rank": self.adapter_rank,
        }

    # -- checkpoints -------------------------------------------------------------------------
    def _save_engine(self, directory: Path, tag: str) -> None:
        # Every rank may write into its own directory, which DeepSpeed creates on rank 0 only.
        # ``latest`` is needed: ZeRO-3 loads weights without optimizer state through it.
        (directory / tag).mkdir(parents=True, exist_ok=True)
        self.engine.save_checkpoint(str(directory), tag=tag)

    def save(self, directory: Path) -> None:
        """Write this rank's part of a checkpoint into ``directory`` (every rank calls it, each
        into a directory of its own), with the node-local scratch it still needs (the home of an
        sgd_switch window in force, the pending rollback point and its own home), and seal it
        with this rank's manifest; resume through ``checkpoints.load_agreed``."""
        self._save_engine(directory, TAG)
        if self.local_rank == 0:  # scratch is written once per node (``_scratch_dir``)
            for source, target in self._scratch_to_keep().items():
                shutil.copytree(source, directory / target, dirs_exist_ok=True)
        if self.rank == 0:
            (directory / STATE_FILE).write_text(json.dumps(self.state()))
        # Last: this rank's manifest covers everything it wrote (see ``seal_rank``).
        world_size = dist.get_world_size() if dist.is_initialized() else 1
        seal_rank(directory, self.rank, world_size)

    def _run_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "active": [{"kick": a.kick.to_dict(), "start": a.start} for a in self.active.values()],
            "adapter_rank": self.adapter_rank,
        }

    def _scratch_to_keep(self) -> dict[Path, str]:
        """Scratch directories a checkpoint must carry, and where inside it."""
        keep = {}
        if self._switch_dir is not None:
            keep[self._switch_dir / HOME_TAG] = f"{SWITCH_DIR}/{HOME_TAG}"
        point = self._rollback
        if point is not None:
            keep[point.directory / ROLLBACK_TAG] = f"{ROLLBACK_TAG}/{ROLLBACK_TAG}"
            if point.switch_dir not in (None, self._switch_dir):
                keep[point.switch_dir / HOME_TAG] = f"{POINT_SWITCH_DIR}/{HOME_TAG}"
        return keep

    def state(self) -> dict[str, Any]:
        """What the engine does not hold: the step, kicks in force, the adapter's rank, the
        control acknowledgements and the rollback point's own run state, with where in the
        checkpoint the point's sgd_switch home is (``rollback_switch``; None: it had none)."""
        rollback = None if self._rollback is None else self._rollback.state
        point_switch = None
        if self._rollback is not None and self._rollback.switch_dir is not None:
            own = self._rollback.switch_dir != self._switch_dir
            point_switch = POINT_SWITCH_DIR if own else SWITCH_DIR
        return {
            **self._run_state(),
            "control": asdict(self.control),
            "rollback": rollback,
            "rollback_switch": point_switch,
        }

    @classmethod
    def restore(
        cls, config: TrainerConfig, task: Task, device: torch.device, directory: Path
    ) -> DeepSpeedRun:
        """The run saved in ``directory`` by ``save``, on a freshly built engine (SGD inside an
        sgd_switch window), its scratch directories back in node-local scratch, at the saved
        LoRA rank, grown to ``task``'s where that is larger (a lora_rank kick by restart)."""
        state = json.loads((directory / STATE_FILE).read_text())
        run = cls(config, task, device, state)
        run.engine.load_checkpoint(str(directory), TAG)
        configured, saved = getattr(task, "adapter_rank", None), run.adapter_rank
        if configured is not None and saved is not None and configured > saved:
            run.set_adapter_rank(configured, "lm_lora_rank")
        run._write_hyperparams()
        if SGD_SWITCH in run.active:  # the AdamW state to switch back to
            run._switch_dir = run._unpack(directory / SWITCH_DIR, "switch")
        if state.get("rollback") is not None:  # a kick's rollback point
            scratch = run._unpack(directory / ROLLBACK_TAG, "rollback")
            switch_dir, where = run._switch_dir, state.get("rollback_switch")
            if where == POINT_SWITCH_DIR:  # a window that has ended since the point
                switch_dir = run._unpack(directory / POINT_SWITCH_DIR, "switch")
            elif where is None:
                switch_dir = None
            run._rollback = RollbackPoint(scratch, state["rollback"], switch_dir)
        return run

    def _unpack(self, source: Path, purpose: str) -> Path:
        """A checkpoint's copy of a scratch directory, copied into fresh node-local scratch."""
        scratch = self._scratch_dir(purpose)
        if self.local_rank == 0:
            shutil.copytree(source, scratch, dirs_exist_ok=True)
        if dist.is_initialized():
            dist.barrier()  # every rank of the node reads it from here on
        return scratch
