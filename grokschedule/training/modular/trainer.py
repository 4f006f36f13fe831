"""The training loop for the built-in modular tasks, free of Ray so it can be driven anywhere.

It reports the metric contract the scheduler reads: ``step``, ``train_loss``, ``train_acc``,
``val_loss``, ``val_acc``, ``weight_norm`` and worker-side ``grok/*`` signals (validation
confidence, probability on the correct class, and the share of training samples whose loss is
exactly zero in float32 — the softmax-collapse marker of arXiv 2501.04697).

Interventions: every step runs through a ``KickApplier`` (idle, it costs a few dict lookups), and
``apply_command`` takes the control channel's commands (``grokschedule.core.commands``) between
steps.
Before a kick the trainer keeps a rollback snapshot of everything a step depends on; a
``rollback`` command restores it. The step counter is *not* rolled back: it counts optimizer steps
taken, so it stays monotone as Tune's ``time_attr`` must, and the windows of the kicks in the
snapshot are shifted by the steps rolled back so each resumes with the time it had left.

Probes (``probe_every``): ``grokschedule.training.probes`` reads the raw gradients every step
(slow-gradient EMA) and adds its ``grok/*`` metrics to the evaluations where a probe is due. They
are monitors: checkpointed with the run, but not part of a kick's rollback snapshot, and they never
touch the model, the optimizer or the RNGs, so the trajectory is the same with probes on or off.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from grokschedule.core.commands import KICK, Command, ControlState
from grokschedule.core.kicks import HYPERPARAM_KINDS, KickRecord
from grokschedule.training.kick_applier import KickApplier
from grokschedule.training.modular.task import ModularTask, build_model
from grokschedule.training.probes import ModelProbes

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
    probe_every: int | None = None  # None: no in-training probes (grokschedule.training.probes)
    probe_budget: float = 0.01  # probes' share of training time at most

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
        if self.probe_every is not None and self.probe_every <= 0:
            raise ValueError(f"probe_every must be > 0 or None, got {self.probe_every}")
        if not 0.0 < self.probe_budget <= 1.0:
            raise ValueError(f"probe_budget must be in (0, 1], got {self.probe_budget}")

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


# Poll function for ``ModularTrainer.run``: step -> commands (or their dicts) to apply before it.
Poll = Callable[[int], Iterable[Mapping[str, Any] | Command]]


class ModularTrainer:
    """Owns model, optimizer and data; ``run`` yields one metrics dict every ``eval_every``.

    ``optimizer`` is always the one built from the config (checkpoint it); the one stepped is
    ``applier.optimizer``, which an sgd_switch kick swaps for a while.
    """

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
        self.applier = KickApplier(self.model, self.optimizer, make_optimizer)
        self.step = 0
        self.control = ControlState()
        self._rollback: dict[str, Any] | None = None  # state before the latest kick
        self._batch_generator = torch.Generator().manual_seed(config.seed + 1)
        size = config.batch_size
        self._batch_size = None if size is None or size >= len(self.x_train) else size
        self.probes: ModelProbes | None = None
        if config.probe_every is not None:  # training inputs only: probes need no test set
            self.probes = ModelProbes(
                self.model, self.x_train, config.probe_every, config.probe_budget, seed=config.seed
            )

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._batch_size is None:
            return self.x_train, self.y_train
        index = torch.randint(
            len(self.x_train), (self._batch_size,), generator=self._batch_generator
        )
        return self.x_train[index], self.y_train[index]

    def train_step(self) -> None:
        """One optimizer step. A batch_size kick accumulates ``applier.accumulation_steps``
        mini-batches per step; full-batch training has no larger batch to take, so there it only
        rescales lr (the kick's ``scale_lr``)."""
        applier = self.applier
        optimizer = applier.optimizer
        start = time.perf_counter()
        self.model.train()
        optimizer.zero_grad(set_to_none=True)
        micro = 1 if self._batch_size is None else applier.accumulation_steps
        for _ in range(micro):
            x, y = self._batch()
            loss = F.cross_entropy(self.model(x), y)
            (loss if micro == 1 else loss / micro).backward()
        if self.probes is not None:  # raw gradients, before any kick transforms them
            self.probes.after_backward(self.step + 1)
        applier.before_step(self.step)
        optimizer.step()
        applier.after_step(self.step)
        self.step += 1
        if self.probes is not None:
            self.probes.schedule.step_done(time.perf_counter() - start)

    def apply_command(self, command: Mapping[str, Any] | Command) -> KickRecord | None:
        """Apply a control command now, between steps; returns the kick's record (None for a
        rollback). The step it takes effect at is ``self.step`` (reported as
        ``control/applied_step``). ``ValueError`` for a malformed command, an id not above the
        last one applied, or a rollback with no kick to roll back."""
        parsed = command if isinstance(command, Command) else Command.from_dict(command)
        if parsed.id <= self.control.acked_id:
            raise ValueError(
                f"command {parsed.id} is not newer than the last one applied "
                f"({self.control.acked_id}); ids must grow per trial"
            )
        rollbacks = self.control.rollbacks
        record = None
        if parsed.type == KICK:
            assert parsed.kick is not None  # Command guarantees it for kicks
            point = copy.deepcopy(self._step_state())
            record = self.applier.apply(parsed.kick, self.step)  # a refused kick keeps the old
            self._rollback = point
        else:
            if self._rollback is None:
                raise ValueError(
                    f"rollback command {parsed.id}: no kick since the last rollback to undo"
                )
            self._restore_snapshot(self._rollback)
            self._rollback = None
            rollbacks += 1
        self.control = ControlState(parsed.id, self.step, rollbacks)
        return record

    def control_metrics(self) -> dict[str, int]:
        """The acknowledgement keys every report carries when a control channel is in use."""
        return self.control.metrics(len(self.applier.active))

    def _step_state(self) -> dict[str, Any]:
        """Everything the next steps depend on (shared tensors: copy before keeping it)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "applier": self.applier.state_dict(),
            "batch_rng": self._batch_generator.get_state(),
            "step": self.step,
        }

    def _restore_snapshot(self, snapshot: Mapping[str, Any]) -> None:
        """Roll back to ``snapshot`` but keep ``self.step``; kick windows move by the gap."""
        gap = self.step - int(snapshot["step"])
        applier_state = dict(snapshot["applier"])
        applier_state["active"] = [
            {**entry, "start": int(entry["start"]) + gap} for entry in applier_state["active"]
        ]
        self.model.load_state_dict(snapshot["model"])
        self.optimizer.load_state_dict(snapshot["optimizer"])
        self.applier.load_state_dict(applier_state)
        self._batch_generator.set_state(snapshot["batch_rng"])

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
            **(self.probes.metrics(self.step) if self.probes is not None else {}),
        }

    def run(self, poll: Poll | None = None) -> Iterator[dict[str, float]]:
        """Train to ``max_steps``, yielding metrics at every evaluation point. ``poll(step)``,
        if given, is asked before every step for commands to apply (``ControlClient.poll``)."""
        while self.step < self.config.max_steps:
            if poll is not None:
                for command in poll(self.step):
                    self.apply_command(command)
            self.train_step()
            if self.step % self.config.eval_every == 0 or self.step == self.config.max_steps:
                yield self.evaluate()

    def state_dict(self) -> dict[str, Any]:
        """The run's state, with the kicks in force, the control counters and the rollback
        snapshot, so a worker restarted from it can still roll back."""
        return {
            **self._step_state(),
            "config": asdict(self.config),
            "control": asdict(self.control),
            "rollback": self._rollback,
            "probes": None if self.probes is None else self.probes.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from ``state_dict()``. If ``self.config`` changes the optimizer, lr, weight
        decay or momentum against the saved config (the restart fallback,
        ``control.restart_with_config``), the new values win over those in the saved optimizer:
        a new optimizer type starts fresh, new lr/wd/momentum are written into its groups."""
        saved = state["config"]
        changed = {
            name: getattr(self.config, name)
            for name in ("lr", "weight_decay", "momentum")
            if saved[name] != getattr(self.config, name)
        }
        self.model.load_state_dict(state["model"])
        same_optimizer = saved["optimizer"] == self.config.optimizer
        if same_optimizer:
            self.optimizer.load_state_dict(state["optimizer"])
        self.applier.load_state_dict(state["applier"])
        hyperparam_kicks = [a for a in self.applier.active if a.kick.kind in HYPERPARAM_KINDS]
        if hyperparam_kicks and (changed or not same_optimizer):
            raise ValueError(
                f"the config changes {sorted(changed) or ['optimizer']} while kicks "
                f"{[a.kick.kind for a in hyperparam_kicks]} own those values; use the control "
                "channel or the config, not both"
            )
        if same_optimizer:
            for group in self.optimizer.param_groups:
                for name, value in changed.items():
                    if name in group:  # AdamW has no momentum
                        group[name] = value
        self.step = int(state["step"])
        self._batch_generator.set_state(state["batch_rng"])
        self.control = ControlState(**state["control"])
        self._rollback = state["rollback"]
        if self.probes is not None and state.get("probes") is not None:
            self.probes.load_state_dict(state["probes"])
