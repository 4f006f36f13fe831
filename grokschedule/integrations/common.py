"""What the Hugging Face and Lightning callbacks share: the observation from what a trainer
logged, the policy GrokScheduler uses, and its decisions carried out on the trainer's own model,
optimizer and lr schedulers.

``GrokSettings`` holds GrokScheduler's arguments with GrokScheduler's defaults and validates them
when a callback is built; ``GrokSettings.run`` makes the ``GrokRun`` of one ``fit``/``train``
call, which turns each evaluation's logged values into an ``Observation``, asks ``GrokPolicy``
and carries the decision out. The callbacks only translate their trainer's events and the
two actions that are the trainer's own: stopping, and moving its step limit (EXTEND).

Kicks act on the live optimizer in place (``OptimizerKicks``): lr and weight decay in its param
groups, the lr schedulers' ``base_lrs`` scaled alike so the schedule carries the kick on instead
of undoing it at its next step, an SGD-momentum switch that sets the optimizer aside for the
kick's window, and the gradient transforms of ``grokschedule.training.kick_applier`` before each
optimizer step. Before each kick the model, the optimizer and the kicks in force are saved to
``rollback-rank<N>.pt`` in the run's rollback directory (``torch.save``, not the trainer's own
checkpointing: Hugging Face's ``Trainer._save_checkpoint`` is private and Lightning's
``save_checkpoint`` writes the whole trainer); a ROLLBACK loads it. As in the native trainer the
step counter is not rolled back, and the lr schedule keeps its place.

A run resumed from the trainer's checkpoint resumes the policy too: ``GrokRun.state_dict``
(packed by ``run_state.pack_state``) is saved with each checkpoint and
``GrokSettings.run(state=...)`` continues from it, so the memorization step, the evidence, the
patience clock, the kicks used and in force, the rollback point and the decision log carry on
instead of starting afresh.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from grokschedule.core.commands import Command, ControlState
from grokschedule.core.contract import CONTROL_WEIGHT_DECAY, MetricNames, Observation
from grokschedule.core.decision import Decision, DecisionKind
from grokschedule.core.kick_policy import KickConfig
from grokschedule.core.kicks import (
    GRAD_TRANSFORMS,
    LORA_RANK,
    LR_CYCLE,
    LR_MULTIPLY,
    SGD_SWITCH,
    WEIGHT_DECAY,
    ActiveKick,
    Kick,
    KickRecord,
    value_changes,
)
from grokschedule.core.policy import USER_ARGUMENTS, GrokPolicy, PolicyConfig, config_arguments
from grokschedule.core.summary import judge
from grokschedule.tracking import names as mlflow_names
from grokschedule.tracking.timeline import verdict_tags
from grokschedule.training.kick_applier import KickApplier, read_hyperparams, write_hyperparams

logger = logging.getLogger("grokschedule.integrations")

RUN = "run"  # the policy's key for the one run a callback judges
# Kinds a callback carries out on a trainer's optimizer in place. A batch_size kick needs the
# trainer's gradient accumulation, which is fixed when its loop starts.
HYPERPARAM_LIVE = (LR_MULTIPLY, LR_CYCLE, WEIGHT_DECAY, SGD_SWITCH)
LIVE_KINDS = (*HYPERPARAM_LIVE, *GRAD_TRANSFORMS)
ANNOTATION_PREFIX = "scheduler/"  # the decision's keys, as GrokCallback writes them into results
_METRIC_NAME = re.compile(r"^[/\w.\- :]+$")  # MLflow's rule for metric names
_MAX_TAG = 8000  # MLflow's limit on a tag value


# A callback's arguments as GrokSettings takes them: the metric names (MetricNames' order after
# the step) and the policy's own.
_NAME_ARGUMENTS = ("metric", "train_loss", "train_acc", "val_loss", "weight_norm")
_POLICY_ARGUMENTS = ("metric", "mode", *USER_ARGUMENTS)


class MissingMetricError(ValueError):
    """A metric the callback was configured to read is not among what the trainer logged."""


class GrokSettings:
    """GrokScheduler's arguments, validated now, with GrokScheduler's defaults (see its
    docstring for each); ``max_t=None`` reads the trainer's own step limit when training
    starts. ``hint`` ends a missing-metric error with what to change in that trainer."""

    def __init__(
        self,
        *,
        metric: str,
        mode: str,
        names: MetricNames,
        max_t: float | None,
        grok_threshold: float,
        max_extension: float | None,
        patience_factor: float,
        min_patience: float | None,
        stop_on_grok: bool,
        phase_options: Mapping[str, Any] | None,
        interventions: bool | list[str] | Mapping[str, Any] | None,
        predictor: bool | str,
        stop_below: float | None,
        keep_above: float,
        judge_after: float,
        adaptive: bool,
        hint: str,
    ) -> None:
        self.names = names
        self.hint = hint
        self.max_t = max_t
        # locals(): the arguments (the policy's are taken by name); max_t may come later.
        config = config_arguments(locals())
        del config["max_t"]
        kicks: KickConfig | None = config["interventions"]
        # The default kicks hold lora_rank, which the policy gives only to a trial that reports
        # a LoRA rank; a callback reports none, so only a lora_rank the user names is refused.
        defaults = interventions is True or (
            isinstance(interventions, Mapping) and "kicks" not in interventions
        )
        for kick in kicks.kicks if kicks else ():
            if kick.kind == LORA_RANK and defaults:
                continue
            if kick.kind == LORA_RANK:
                raise ValueError(
                    "interventions: a lora_rank kick cannot be carried out by a trainer callback: "
                    "it rebuilds the model and its optimizer around a larger LoRA adapter, which "
                    "the trainer owns; use the DeepSpeed trainer's LM task (lm_lora_rank) with "
                    f"GrokScheduler, or other kinds: {list(LIVE_KINDS)}"
                )
            if kick.kind not in LIVE_KINDS:
                raise ValueError(
                    f"interventions: a {kick.kind} kick cannot be carried out by a trainer "
                    f"callback (the trainer fixes its gradient accumulation when it starts); "
                    f"allowed: {list(LIVE_KINDS)}"
                )
        self._config: dict[str, Any] = {"metric": metric, "mode": mode, **config}
        # Bad arguments fail here, before any training; max_t may come from the trainer later.
        self.config(1.0 if max_t is None else max_t)

    @classmethod
    def of_callback(cls, arguments: Mapping[str, Any], hint: str) -> GrokSettings:
        """The settings of a callback built with ``arguments``, its ``__init__``'s
        ``locals()``: each callback keeps its own signature (its trainer's metric names as
        defaults) and hands GrokScheduler's arguments, which it takes by the same names, on
        here in one piece. The others (``self``, ``rollback_dir``) are left out."""
        if not arguments["metric"]:
            raise ValueError("metric must be a non-empty metric name")
        names = MetricNames("step", *(arguments[key] for key in _NAME_ARGUMENTS))
        policy = {key: arguments[key] for key in _POLICY_ARGUMENTS}
        return cls(names=names, hint=hint, **policy)

    @property
    def interventions(self) -> KickConfig | None:
        kicks: KickConfig | None = self._config["interventions"]
        return kicks

    def config(self, max_t: float) -> PolicyConfig:
        return PolicyConfig(max_t=max_t, **self._config)

    def budget(self, trainer_limit: float | None, name: str) -> float:
        """``max_t``: the one given, or the trainer's own step limit ``trainer_limit`` (read as
        ``name`` in errors); a ``max_t`` beyond that limit is never reached."""
        if self.max_t is None:
            if trainer_limit is None or trainer_limit <= 0:
                raise ValueError(
                    f"max_t is needed: the trainer has no step limit ({name}={trainer_limit!r})"
                )
            return float(trainer_limit)
        if trainer_limit is not None and 0 < trainer_limit < self.max_t:
            raise ValueError(
                f"max_t ({self.max_t:g}) is beyond the trainer's {name} ({trainer_limit:g}): "
                f"give the trainer at least max_t (and max_t + max_extension to let runs extend)"
            )
        return float(self.max_t)

    def run(
        self,
        max_t: float,
        model: nn.Module,
        kicks: OptimizerKicks | None,
        rollback_path: Path,
        mlflow: MlflowDecisions | None = None,
        state: Mapping[str, Any] | None = None,
    ) -> GrokRun:
        """A fresh run, or with ``state`` (``run_state.unpack_state``) the run it was saved
        from, once the trainer has restored its model, optimizer and lr schedulers from the
        checkpoint."""
        config = self.config(max_t)
        if state is None:
            return GrokRun(GrokPolicy(config), self, model, kicks, rollback_path, mlflow)
        policy: GrokPolicy = state["policy"]
        saved = policy.config
        changed = [
            f.name for f in fields(config) if getattr(config, f.name) != getattr(saved, f.name)
        ]
        if changed:
            raise ValueError(
                f"the checkpoint's scheduler state was made with other settings ({changed}): "
                "resume with the arguments (and max_t) it was made with"
            )
        run = GrokRun(policy, self, model, kicks, rollback_path, mlflow)
        run.load_state_dict(state)
        return run


class GrokRun:
    """One training run under the policy: observe each evaluation, carry out its decision.

    ``observe`` → ``carry_out`` at every evaluation; ``before_step``/``after_step`` around each
    optimizer step (gradient transforms, kick windows); ``finish`` at the end.
    """

    def __init__(
        self,
        policy: GrokPolicy,
        settings: GrokSettings,
        model: nn.Module,
        kicks: OptimizerKicks | None,
        rollback_path: Path,
        mlflow: MlflowDecisions | None,
    ) -> None:
        if policy.kicks is not None and kicks is None:
            raise ValueError("interventions need the trainer's torch optimizer; none was found")
        self.policy = policy
        self.names = settings.names
        self.hint = settings.hint
        self.model = model
        self.kicks = kicks
        self.rollback_path = rollback_path
        self.mlflow = mlflow
        self.control = ControlState()
        self.records: list[KickRecord] = []  # what each kick and its revert changed
        self.step = -math.inf  # the last step observed
        self._checked = False

    @property
    def decisions(self) -> list[Decision]:
        """The decisions worth showing (each change of kind or phase, each command)."""
        return self.policy.decision_log(RUN)

    @property
    def last_decision(self) -> Decision | None:
        return self.policy.last_decision(RUN)

    def observe(self, logged: Mapping[str, Any], step: int) -> Decision | None:
        """The decision on what the trainer logged by ``step``; ``None`` for a step already
        judged (an evaluation repeated at the same step)."""
        if step <= self.step:
            return None
        result = {**logged, self.names.time_attr: step}
        if not self._checked:
            missing = [name for name in self.names.required if result.get(name) is None]
            if missing:
                raise MissingMetricError(
                    f"the trainer did not log {missing} by step {step}; it logged "
                    f"{sorted(logged)}. {self.hint}"
                )
            self._checked = True
        self.step = step
        obs = Observation.from_result(result, self.names, self._control())
        return self.policy.observe(RUN, obs)

    def carry_out(
        self,
        decision: Decision,
        *,
        stop: Callable[[], None],
        extend: Callable[[float], float],
        metrics: Mapping[str, float],
    ) -> Decision:
        """Act on ``decision`` at ``self.step``: ``stop()`` ends the run; ``extend(limit)``
        moves the trainer's step limit to at most ``limit`` and returns the one it set.
        Returns the decision, with a note where it was carried out only in part. ``metrics``
        go to MLflow with it (what the trainer's own logging cannot see)."""
        step, kind = int(self.step), decision.kind
        note = ""
        if kind is DecisionKind.STOP:
            stop()
        elif kind is DecisionKind.EXTEND:
            config = self.policy.config
            limit = config.max_t + config.extension
            reached = extend(limit)
            if reached < limit:
                note = f"the trainer's loop ends at step {reached:.0f}, before {limit:.0f}"
        elif decision.command is not None and kind is DecisionKind.KICK:
            note = self._kick(decision.command, step)
        elif decision.command is not None and kind is DecisionKind.ROLLBACK:
            self._roll_back(decision.command, step)
        if note:
            decision = self.policy.note(RUN, decision, note)
        if kind is not DecisionKind.CONTINUE:
            logger.info("grokschedule: step %d: %s: %s", step, kind.value, decision.reason)
        if self.mlflow is not None:
            self.mlflow.log(step, decision, metrics)
        return decision

    def before_step(self, step: int) -> None:
        if self.kicks is not None:
            self.kicks.before_step(step)

    def after_step(self, step: int) -> None:
        """Right after optimizer step ``step`` and the lr schedulers' step that follows it."""
        if self.kicks is not None:
            self.records.extend(self.kicks.after_step(step))

    def finish(self, steps_used: float, error: str | None = None) -> None:
        if self.mlflow is not None:
            self.mlflow.end(self.decisions, steps_used, self.policy.config.max_t, error)

    @property
    def extended_to(self) -> float | None:
        """The step limit the last decision moved the trainer to (EXTEND), which a trainer
        resumed from its checkpoint has forgotten; ``None`` when it moved none."""
        last = self.last_decision
        if last is None or last.kind is not DecisionKind.EXTEND:
            return None
        return self.policy.config.max_t + self.policy.config.extension

    def state_dict(self) -> dict[str, Any]:
        """What the run has learnt, for the trainer's checkpoint (``run_state``): the policy,
        the last step observed (a resumed trainer repeating it is ignored, as in
        ``observe``), the acknowledgements, the kick records, the kicks in force (the
        optimizer's own state is the checkpoint's) and the rollback point's file."""
        point = self.rollback_path.read_bytes() if self.rollback_path.is_file() else None
        return {
            "policy": self.policy,
            "step": self.step,
            "checked": self._checked,
            "control": self.control,
            "records": list(self.records),
            "kicks": None if self.kicks is None else self.kicks.resume_state(),
            "rollback_point": point,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state_dict()``; the policy is taken by ``GrokSettings.run``."""
        self.step = float(state["step"])
        self._checked = bool(state["checked"])
        self.control = state["control"]
        self.records = list(state["records"])
        if self.kicks is not None and state["kicks"] is not None:
            self.kicks.resume(state["kicks"])
        point: bytes | None = state["rollback_point"]
        if point is None:  # a later kick's point, left by the run that went on after the save
            self.rollback_path.unlink(missing_ok=True)
            return
        self.rollback_path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.rollback_path.with_suffix(".partial")
        partial.write_bytes(point)
        os.replace(partial, self.rollback_path)

    # -- internals --------------------------------------------------------------------------
    def _control(self) -> dict[str, float]:
        """The acknowledgements the kick policy reads, as a polling trainer reports them."""
        if self.kicks is None:
            return {}
        control: dict[str, float] = dict(self.control.metrics(len(self.kicks.active)))
        control[CONTROL_WEIGHT_DECAY] = max(wd for _, wd in read_hyperparams(self.kicks.home))
        return control

    def _kick(self, command: Command, step: int) -> str:
        assert self.kicks is not None and command.kick is not None
        try:
            self.kicks.check(command.kick)
        except ValueError as error:
            assert self.policy.kicks is not None  # a KICK comes only from a policy with kicks
            self.policy.kicks.not_applied(RUN, command.id)
            return f"not applied: {error}"
        self._save_point(step)
        self.records.append(self.kicks.apply(command.kick, step))
        self.control = ControlState(command.id, step, self.control.rollbacks)
        return ""

    def _roll_back(self, command: Command, step: int) -> None:
        assert self.kicks is not None
        if not self.rollback_path.is_file():
            raise ValueError(f"rollback command {command.id}: no rollback point to return to")
        point = torch.load(self.rollback_path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(point["model"])
        self.kicks.restore(point["kicks"], step)
        self.rollback_path.unlink()
        self.control = ControlState(command.id, step, self.control.rollbacks + 1)

    def _save_point(self, step: int) -> None:
        assert self.kicks is not None
        self.rollback_path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.rollback_path.with_suffix(".partial")
        point = {"model": self.model.state_dict(), "kicks": self.kicks.state_dict(step)}
        torch.save(point, partial)
        os.replace(partial, self.rollback_path)  # a point on disk under its name is whole


def rollback_file(directory: str | os.PathLike[str], rank: int) -> Path:
    """Where rank ``rank`` keeps its rollback point: every rank of a data-parallel run keeps
    its own, as each has its own optimizer state."""
    return Path(directory) / f"rollback-rank{rank}.pt"


@torch.no_grad()
def weight_norm(model: nn.Module) -> float:
    """‖w‖₂ over all parameters, as the native trainers report ``weight_norm``."""
    norms = [torch.linalg.vector_norm(p.detach().float()) for p in model.parameters()]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def decision_record(decision: Decision) -> dict[str, float | str]:
    """The decision under the keys the Tune path writes into results (``GrokCallback``):
    ``scheduler/decision``, ``…/cause``, ``…/reason``, ``…/phase``, ``…/score``, and each
    signal behind it as ``scheduler/<name>``."""
    record: dict[str, float | str] = {
        f"{ANNOTATION_PREFIX}{name}": value for name, value in decision.signals.items()
    }
    record.update(
        {
            f"{ANNOTATION_PREFIX}decision": decision.kind.value,
            f"{ANNOTATION_PREFIX}cause": decision.cause.value,
            f"{ANNOTATION_PREFIX}reason": decision.reason,
            f"{ANNOTATION_PREFIX}phase": decision.phase.value,
            f"{ANNOTATION_PREFIX}score": decision.score,
        }
    )
    return record


def numbers(logged: Mapping[str, Any]) -> dict[str, float]:
    """The numeric values of a trainer's log (tensors included), for the observation."""
    out: dict[str, float] = {}
    for key, value in logged.items():
        scalar = isinstance(value, torch.Tensor) and value.numel() == 1
        if scalar or (isinstance(value, int | float) and not isinstance(value, bool)):
            out[key] = float(value)
    return out


class OptimizerKicks:
    """Kicks applied in place to a trainer's own optimizer and lr schedulers; see the module
    docstring. ``step`` is the index of the optimizer step being taken, as in
    ``KickApplier``: ``apply`` between steps, ``before_step`` before ``optimizer.step()``,
    ``after_step`` once the step and the schedulers' step after it are done.

    lr and weight decay follow ``KickApplier``'s rule: while kicks are in force each group
    holds its unkicked value × the product of their factors, and when the last ends the
    schedulers' ``base_lrs`` and the weight decays are written back exactly. The unkicked lr
    is read from the group each time (the schedule moves it), so a scheduler without
    ``base_lrs`` (``ReduceLROnPlateau``) works too. An sgd_switch shadows the optimizer's
    ``step`` with an SGD over the same parameters (lr ``params.lr`` × the lr kicks, the
    groups' weight decay); its own state is left untouched for when it comes back.
    ``switch_blocker`` says why this trainer cannot take a switch (``""``: it can).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedulers: Iterable[Any] = (),
        switch_blocker: str = "",
    ) -> None:
        self.home = optimizer
        self._schedulers = [s for s in schedulers if isinstance(getattr(s, "base_lrs", None), list)]
        self._grads = KickApplier(model, optimizer)  # the gradient transforms, and only those
        self._active: dict[str, ActiveKick] = {}
        self._lr_factor = 1.0  # the product of lr factors now written into the groups
        self._base_wd: list[float] | None = None  # group weight decays before the kicks
        self._base_lrs: list[list[Any]] | None = None  # each scheduler's base_lrs, likewise
        self._sgd: torch.optim.SGD | None = None
        self._shadowed: dict[str, Any] = {}  # the optimizer's own instance ``step``, if any
        self._switch_blocker = switch_blocker

    @property
    def active(self) -> tuple[ActiveKick, ...]:
        return (*self._active.values(), *self._grads.active)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The optimizer that steps now: the SGD during an sgd_switch."""
        return self.home if self._sgd is None else self._sgd

    def check(self, kick: Kick) -> None:
        """``ValueError`` for a kick this trainer cannot carry out."""
        if kick.kind not in LIVE_KINDS:
            raise ValueError(f"a {kick.kind} kick cannot be applied by a trainer callback")
        if kick.kind == SGD_SWITCH and self._switch_blocker:
            raise ValueError(f"an sgd_switch cannot be applied: {self._switch_blocker}")

    def apply(self, kick: Kick, step: int) -> KickRecord:
        """Put ``kick`` in force from optimizer step ``step``; a kind in force is replaced."""
        self.check(kick)
        if kick.kind in GRAD_TRANSFORMS:
            return self._grads.apply(kick, step)
        before = self._snapshot()
        if self._base_wd is None:
            self._base_wd = [wd for _, wd in read_hyperparams(self.home)]
            self._base_lrs = [list(s.base_lrs) for s in self._schedulers]
        self._active.pop(kick.kind, None)
        self._active[kick.kind] = ActiveKick(kick, step)
        if kick.kind == SGD_SWITCH:
            self._switch_on(kick)
        self._refresh(step)
        return KickRecord(step, "apply", kick, value_changes(before, self._snapshot()))

    def before_step(self, step: int) -> None:
        self._grads.before_step(step)

    def after_step(self, step: int) -> list[KickRecord]:
        """Revert the kicks whose window ended with ``step``; write lr and wd for ``step + 1``."""
        records = self._grads.after_step(step)
        for active in list(self._active.values()):
            if active.end is not None and active.end <= step + 1:
                before = self._snapshot()
                del self._active[active.kick.kind]
                if active.kick.kind == SGD_SWITCH:
                    self._switch_off()
                self._refresh(step + 1)
                changes = value_changes(before, self._snapshot())
                records.append(KickRecord(step + 1, "revert", active.kick, changes))
        self._refresh(step + 1)
        return records

    def state_dict(self, step: int) -> dict[str, Any]:
        """Everything a rollback to ``step`` restores (tensors shared: save it at once)."""
        return {
            "step": step,
            "optimizer": self.home.state_dict(),
            "active": [{"kick": a.kick.to_dict(), "start": a.start} for a in self._active.values()],
            "lr_factor": self._lr_factor,
            "base_wd": self._base_wd,
            "saved_base_lrs": self._base_lrs,
            "base_lrs": [list(s.base_lrs) for s in self._schedulers],
            "sgd": None if self._sgd is None else self._sgd.state_dict(),
            "grads": self._grads.state_dict(),
        }

    def resume_state(self) -> dict[str, Any]:
        """The kicks in force, for a checkpoint whose optimizer and lr schedulers the trainer
        saves (kicked values included); ``resume`` puts them back once it restored those."""
        return {
            "active": [{"kick": a.kick.to_dict(), "start": a.start} for a in self._active.values()],
            "lr_factor": self._lr_factor,
            "base_wd": self._base_wd,
            "saved_base_lrs": self._base_lrs,
            "sgd": None if self._sgd is None else self._sgd.state_dict(),
            "grads": self._grads.state_dict(),
        }

    def resume(self, state: Mapping[str, Any]) -> None:
        """Take up ``resume_state()`` on the optimizer and lr schedulers restored from the
        same checkpoint: their lr, weight decay and ``base_lrs`` already carry the kicks."""
        self._active = {}
        for entry in state["active"]:
            kick = Kick.from_dict(entry["kick"])
            self._active[kick.kind] = ActiveKick(kick, int(entry["start"]))
        self._lr_factor = float(state["lr_factor"])
        self._base_wd = state["base_wd"]
        self._base_lrs = state["saved_base_lrs"]
        if SGD_SWITCH in self._active:
            self._switch_on(self._active[SGD_SWITCH].kick)
            assert self._sgd is not None
            self._sgd.load_state_dict(state["sgd"])
        self._grads.load_state_dict(state["grads"])

    def restore(self, state: Mapping[str, Any], step: int) -> None:
        """Return to ``state_dict()`` at optimizer step ``step``: the optimizer's state and
        the kicks in force then, their windows moved by the steps since; the lr schedule keeps
        its place (the groups get the lr it gives now, times the restored kicks)."""
        unkicked = [lr / self._lr_factor for lr, _ in read_hyperparams(self.home)]
        if self._sgd is not None:
            self._switch_off()
        self.home.load_state_dict(state["optimizer"])
        gap = step - int(state["step"])
        self._active = {}
        for entry in state["active"]:
            kick = Kick.from_dict(entry["kick"])
            self._active[kick.kind] = ActiveKick(kick, int(entry["start"]) + gap)
        self._base_wd = state["base_wd"]
        self._base_lrs = state["saved_base_lrs"]
        for scheduler, base_lrs in zip(self._schedulers, state["base_lrs"], strict=True):
            scheduler.base_lrs = list(base_lrs)
        self._lr_factor = float(state["lr_factor"])
        groups = zip(unkicked, read_hyperparams(self.home), strict=True)
        write_hyperparams(self.home, [(lr, wd) for lr, (_, wd) in groups], self._lr_factor)
        if SGD_SWITCH in self._active:
            self._switch_on(self._active[SGD_SWITCH].kick)
            assert self._sgd is not None
            self._sgd.load_state_dict(state["sgd"])
        grads = dict(state["grads"])
        grads["active"] = [{**e, "start": int(e["start"]) + gap} for e in grads["active"]]
        self._grads.load_state_dict(grads)
        self._refresh(step)

    # -- internals --------------------------------------------------------------------------
    def _refresh(self, step: int) -> None:
        """Write lr and weight decay for ``step``; the exact bases once no kick is left."""
        if self._base_wd is None or self._base_lrs is None:
            return
        kicks = list(self._active.values())
        lr_factor = math.prod(a.kick.lr_factor(step - a.start) for a in kicks)
        wd_factor = math.prod(a.kick.wd_factor() for a in kicks)
        current = read_hyperparams(self.home)
        unkicked = [
            (lr / self._lr_factor, wd) for (lr, _), wd in zip(current, self._base_wd, strict=True)
        ]
        write_hyperparams(self.home, unkicked, lr_factor, wd_factor)
        for scheduler, base_lrs in zip(self._schedulers, self._base_lrs, strict=True):
            scheduler.base_lrs = [lr * lr_factor for lr in base_lrs]
        if self._sgd is not None:
            lr = self._active[SGD_SWITCH].kick.params["lr"]
            write_hyperparams(self._sgd, [(lr, wd) for wd in self._base_wd], lr_factor, wd_factor)
        self._lr_factor = lr_factor
        if not kicks:
            self._base_wd = self._base_lrs = None

    def _switch_on(self, kick: Kick) -> None:
        groups = [{"params": group["params"]} for group in self.home.param_groups]
        sgd = torch.optim.SGD(groups, lr=kick.params["lr"], momentum=kick.params["momentum"])
        if self._sgd is None:
            self._shadowed = {k: v for k, v in vars(self.home).items() if k == "step"}
        self._sgd = sgd
        # The trainer keeps calling its optimizer's step(); for the window, that is the SGD's.
        self.home.step = sgd.step  # type: ignore[method-assign]

    def _switch_off(self) -> None:
        if "step" in self._shadowed:
            self.home.step = self._shadowed["step"]  # type: ignore[method-assign]
        else:
            del self.home.step
        self._sgd = None
        self._shadowed = {}

    def _snapshot(self) -> dict[str, Any]:
        hyperparams = read_hyperparams(self.optimizer)
        return {
            "optimizer": type(self.optimizer).__name__,
            "lr": tuple(lr for lr, _ in hyperparams),
            "weight_decay": tuple(wd for _, wd in hyperparams),
        }


class MlflowDecisions:
    """The decisions of a run written to that run in MLflow under the Tune path's names:
    ``scheduler/score`` and the ``scheduler/<signal>`` metrics at each evaluation, the
    ``grok.phase`` and ``grok.last_decision`` tags while it runs, the verdict tags and
    ``grok/decisions.json`` at the end (``grokschedule.tracking.names``).

    ``client`` is an ``mlflow.MlflowClient``; calls are synchronous, like the trainers' own
    MLflow logging they sit next to.
    """

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self._tagged: tuple[str, str] | None = None

    def log(self, step: int, decision: Decision, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric, RunTag

        values = dict(metrics)
        values.update({f"{ANNOTATION_PREFIX}{k}": v for k, v in decision.signals.items()})
        values[f"{ANNOTATION_PREFIX}score"] = decision.score
        now = int(time.time() * 1000)
        batch = [
            Metric(key, float(value), now, step)
            for key, value in values.items()
            if math.isfinite(value) and _METRIC_NAME.match(key)
        ]
        tags = []
        label = (decision.phase.value, decision.reason)
        if label != self._tagged:
            self._tagged = label
            line = f"{decision.kind.value} @ {decision.step:.0f}: {decision.reason}"
            tags = [
                RunTag(mlflow_names.PHASE, decision.phase.value),
                RunTag(mlflow_names.LAST_DECISION, line[:_MAX_TAG]),
            ]
        self.client.log_batch(self.run_id, metrics=batch, tags=tags)

    def end(
        self, decisions: Sequence[Decision], steps_used: float, max_t: float, error: str | None
    ) -> None:
        from mlflow.entities import RunTag

        tags = verdict_tags(judge(decisions, steps_used, max_t, error))
        if decisions:
            last = decisions[-1]
            tags[mlflow_names.VERDICT] = f"{last.kind.value}: {last.reason}"
        batch = [RunTag(key, value[:_MAX_TAG]) for key, value in tags.items()]
        self.client.log_batch(self.run_id, tags=batch)
        records = json.dumps([d.to_dict() for d in decisions], indent=1)
        self.client.log_text(self.run_id, records, mlflow_names.DECISIONS_JSON)
