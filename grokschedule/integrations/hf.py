"""GrokScheduler's policy inside a Hugging Face ``transformers.Trainer``.

``GrokTrainerCallback`` judges the run at each evaluation, from what the Trainer logged (the
train ``loss``, ``eval_loss``, the ``compute_metrics`` keys such as ``eval_accuracy``) plus a
weight norm it computes from the model, and acts in the Trainer's own terms:

- STOP: ``control.should_training_stop``, the reason in the log history and the log;
- EXTEND: ``state.max_steps`` raised, up to ``max_t + max_extension`` and the steps the
  Trainer's loop has (it sizes its epochs from ``args.max_steps`` when training starts, so give
  the Trainer ``max_steps = max_t + max_extension`` and the callback ``max_t``: the callback
  ends the run at ``max_t`` unless it extends it, and the lr schedule spans the extension);
- KICK / ROLLBACK: on the Trainer's optimizer and lr scheduler in place, behind a rollback
  point in ``args.output_dir/grok_rollback`` (``grokschedule.integrations.common``).

Each decision goes into the evaluation's entry of ``state.log_history`` under the keys the Tune
path writes into results (``scheduler/decision``, ``scheduler/reason``, …), and, when the
Trainer reports to MLflow, to its MLflow run under the Tune path's tag and metric names.

Each checkpoint the Trainer saves gets the run's scheduler state as ``grok_state.pt`` in its
folder (the main process writes it in ``on_save``, right after the Trainer's own files), and
``train(resume_from_checkpoint=...)`` from a checkpoint in ``args.output_dir`` picks it up in
``on_train_begin``, after the Trainer restored its state, model, optimizer and lr scheduler.
Not ``ExportableState``: that stores JSON in ``trainer_state.json``, is restored only with
``restore_callback_states_from_checkpoint``, and then replaces the callback with a new one.

``GrokMetricsCallback`` only adds ``weight_norm`` to that entry: for a ``GrokScheduler`` that
judges the Trainer from Ray Tune (``RayTrainReportCallback`` reports the log history).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, IntervalStrategy

from grokschedule.integrations.common import (
    GrokRun,
    GrokSettings,
    MissingMetricError,
    MlflowDecisions,
    OptimizerKicks,
    decision_record,
    numbers,
    rollback_file,
    weight_norm,
)
from grokschedule.integrations.run_state import pack_state, unpack_state

logger = logging.getLogger("grokschedule.integrations")

ROLLBACK_DIR = "grok_rollback"  # inside args.output_dir
STATE_FILE = "grok_state.pt"  # inside each checkpoint folder
_HINT = (
    "Log the train loss by every evaluation (logging_steps dividing eval_steps), return the "
    "target from compute_metrics (its 'accuracy' is logged as 'eval_accuracy'), or pass the "
    "names the Trainer logs (e.g. metric='eval_acc'), or None for one it does not log."
)


def eval_entry(state: TrainerState, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The log-history entry of the evaluation that logged ``metrics`` at this step (the
    Trainer logs them just before ``on_evaluate``); a new entry if it is not there."""
    if state.log_history:
        last = state.log_history[-1]
        if last.get("step") == state.global_step and all(k in last for k in metrics):
            return last
    entry: dict[str, Any] = {"step": state.global_step}
    state.log_history.append(entry)
    return entry


class GrokMetricsCallback(TrainerCallback):
    """Adds the model's weight norm to each evaluation's log-history entry as
    ``weight_norm``, the one contract metric a Trainer does not log itself."""

    def __init__(self, weight_norm: str = "weight_norm") -> None:
        if not weight_norm:
            raise ValueError("weight_norm must be a non-empty metric name")
        self.weight_norm = weight_norm

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: torch.nn.Module | None = None,
        metrics: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if model is not None:
            eval_entry(state, metrics or {})[self.weight_norm] = weight_norm(model)


class GrokTrainerCallback(TrainerCallback):
    """GrokScheduler's decisions for one ``transformers.Trainer`` run; see the module docstring.

    The arguments are GrokScheduler's, with its defaults, except the names, which default to
    what a Trainer logs: ``metric="eval_accuracy"`` (from ``compute_metrics``),
    ``train_loss="loss"``, ``val_loss="eval_loss"``, ``train_acc=None``; ``weight_norm`` is the
    key the callback logs the model's weight norm under (``None``: not computed).
    ``max_t=None`` is the Trainer's ``max_steps``. ``interventions`` may name the kinds
    ``lr_multiply``, ``lr_cycle``, ``weight_decay``, ``sgd_switch``, ``grokfast``,
    ``grad_noise`` and ``ortho_grad``. ``rollback_dir`` defaults to
    ``args.output_dir/grok_rollback``. After training, ``run`` holds the policy and the
    decisions (``run.decisions``, ``run.last_decision``) and what each kick changed
    (``run.records``). Resumed from a checkpoint, the run goes on from the state saved with it
    (module docstring); a checkpoint without one (saved before this callback, or resumed from
    outside ``args.output_dir``) starts the policy afresh, with a warning.
    """

    def __init__(
        self,
        metric: str = "eval_accuracy",
        mode: str = "max",
        *,
        max_t: float | None = None,
        grok_threshold: float = 0.95,
        max_extension: float | None = None,
        patience_factor: float = 20.0,
        min_patience: float | None = None,
        stop_on_grok: bool = True,
        train_loss: str | None = "loss",
        train_acc: str | None = None,
        val_loss: str | None = "eval_loss",
        weight_norm: str | None = "weight_norm",
        phase_options: Mapping[str, Any] | None = None,
        interventions: bool | list[str] | Mapping[str, Any] | None = None,
        predictor: bool | str = True,
        stop_below: float | None = None,
        keep_above: float = 0.5,
        judge_after: float = 4.0,
        adaptive: bool = False,
        rollback_dir: str | Path | None = None,
    ) -> None:
        self.settings = GrokSettings.of_callback(locals(), _HINT)  # locals(): the arguments alone
        self.rollback_dir = None if rollback_dir is None else Path(rollback_dir)
        self.run: GrokRun | None = None
        self._logged: dict[str, float] = {}
        self._capacity = math.inf  # the steps the Trainer's loop has
        self._unjudged: tuple[int, list[str]] | None = None  # an evaluation without the target
        self._training = False
        self._unsaved = False  # a checkpoint had no folder for the state (warned once)

    # -- Trainer events ---------------------------------------------------------------------
    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: torch.nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        lr_scheduler: Any = None,
        train_dataloader: Any = None,
        **kwargs: Any,
    ) -> None:
        if args.eval_strategy == IntervalStrategy.NO:
            raise ValueError(
                "GrokTrainerCallback decides at each evaluation: set eval_strategy='steps' "
                "(or 'epoch') and eval_steps in TrainingArguments"
            )
        if self.settings.names.train_loss and args.logging_strategy == IntervalStrategy.NO:
            raise ValueError(
                f"GrokTrainerCallback reads the train loss {self.settings.names.train_loss!r}: "
                "set logging_strategy to 'steps' (or pass train_loss=None)"
            )
        assert model is not None  # the Trainer passes its model to every event
        max_t = self.settings.budget(state.max_steps, "max_steps")
        state.max_steps = min(state.max_steps, int(max_t))
        self._capacity = _loop_capacity(args, state, train_dataloader)
        kicks = None
        if self.settings.interventions is not None and optimizer is not None:
            kicks = _optimizer_kicks(model, optimizer, lr_scheduler)
        directory = self.rollback_dir or Path(args.output_dir or ".") / ROLLBACK_DIR
        self.run = self.settings.run(
            max_t,
            model,
            kicks,
            rollback_file(directory, args.process_index),
            _mlflow_run(args, state),
            _saved_state(args, state),
        )
        if self.run.extended_to is not None:
            _extend(state, control, self.run.extended_to, self._capacity)
        self._logged, self._unjudged, self._training, self._unsaved = {}, None, True, False

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if self._training:
            self._logged.update(numbers(logs or {}))

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: torch.nn.Module | None = None,
        metrics: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        run, names = self.run, self.settings.names
        if run is None or not self._training or state.global_step == 0 or model is None:
            return  # outside training, or before its first step (eval_on_start)
        metrics = metrics or {}
        entry = eval_entry(state, metrics)
        logged = {**self._logged, **numbers(metrics)}
        extra: dict[str, float] = {}
        if names.weight_norm:
            extra[names.weight_norm] = entry[names.weight_norm] = weight_norm(model)
        if names.target not in metrics:  # another eval dataset's evaluation at this step
            self._unjudged = (state.global_step, sorted(logged))
            return
        decision = run.observe({**logged, **extra}, state.global_step)
        if decision is None:
            return

        def stop() -> None:
            control.should_training_stop = True

        def extend(limit: float) -> float:
            return _extend(state, control, limit, self._capacity)

        decision = run.carry_out(decision, stop=stop, extend=extend, metrics=extra)
        entry.update(decision_record(decision))

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.run is None or not self._training or not state.is_world_process_zero:
            return
        folder = _checkpoint_folder(args, state)
        if not folder.is_dir():  # a hyperparameter search's trial folder, say
            if not self._unsaved:
                logger.warning(
                    "grokschedule: no checkpoint folder %s to save the scheduler state in; a "
                    "run resumed from its checkpoints starts the policy afresh",
                    folder,
                )
            self._unsaved = True
            return
        partial = folder / f"{STATE_FILE}.partial"
        partial.write_bytes(pack_state(self.run))
        os.replace(partial, folder / STATE_FILE)  # a state under its name is whole

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.run is not None and self._training:
            self._check_judged()
            self.run.before_step(state.global_step)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.run is not None and self._training:
            self.run.after_step(state.global_step - 1)  # the Trainer counted the step already

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.run is None or not self._training:
            return
        self._training = False
        self._check_judged()
        self.run.finish(state.global_step)

    # -- internals --------------------------------------------------------------------------
    def _check_judged(self) -> None:
        """Every evaluation step must carry the target in one of its evaluations."""
        assert self.run is not None
        if self._unjudged is not None and self._unjudged[0] > self.run.step:
            step, logged = self._unjudged
            raise MissingMetricError(
                f"the evaluation at step {step} did not log the target "
                f"{self.settings.names.target!r}; it logged {logged}. {_HINT}"
            )
        self._unjudged = None


def _checkpoint_folder(args: TrainingArguments, state: TrainerState) -> Path:
    """Where the Trainer saves (and, resumed from ``args.output_dir``, loaded) the checkpoint
    of this step; a hyperparameter search's trials save theirs in folders of their own."""
    return Path(args.output_dir or ".") / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"


def _extend(state: TrainerState, control: TrainerControl, limit: float, capacity: float) -> float:
    """Move the Trainer's step limit to ``limit`` (at most its loop's ``capacity``); the one set."""
    reached = state.max_steps
    state.max_steps = max(reached, int(min(limit, capacity)))
    if reached <= state.global_step < state.max_steps:
        control.should_training_stop = False  # the limit the Trainer stopped at moved
    return float(state.max_steps)


def _saved_state(args: TrainingArguments, state: TrainerState) -> dict[str, Any] | None:
    """The scheduler state saved with the checkpoint training resumed from (the Trainer has
    loaded its ``trainer_state.json`` by ``on_train_begin``: ``global_step > 0``); ``None`` for
    a fresh run, or a checkpoint without one (with a warning)."""
    if state.global_step == 0:
        return None
    path = _checkpoint_folder(args, state) / STATE_FILE
    if not path.is_file():
        logger.warning(
            "grokschedule: resumed at step %d without a scheduler state (%s): the policy "
            "starts afresh, its patience and kick budget with it; a checkpoint saved before "
            "grokschedule kept this state, or one outside args.output_dir, has none",
            state.global_step,
            path,
        )
        return None
    saved = unpack_state(path.read_bytes(), str(path))
    # The checkpoint's log history holds its decisions: a state from another run's checkpoint
    # of the same step (a stale output_dir) would judge this one from the wrong evidence.
    judged = [e["step"] for e in state.log_history if "scheduler/decision" in e]
    if (judged[-1] if judged else -math.inf) != saved["step"]:
        raise ValueError(
            f"{path}: its last judged step is {saved['step']:g}, the resumed checkpoint's "
            f"{judged[-1] if judged else 'none'}; it belongs to another run (remove it to start "
            "the policy afresh)"
        )
    return saved


def _loop_capacity(args: TrainingArguments, state: TrainerState, dataloader: Any) -> float:
    """The optimizer steps the Trainer's loop has: its epochs, fixed from ``args.max_steps``
    when training started, × the update steps in one (as ``Trainer`` counts them)."""
    try:
        batches = len(dataloader)
    except TypeError:  # an iterable dataset: the Trainer loops over it without an epoch bound
        return math.inf
    accumulation = args.gradient_accumulation_steps
    per_epoch = max(batches // accumulation + int(batches % accumulation > 0), 1)
    return float(state.num_train_epochs * per_epoch)


def _optimizer_kicks(model: torch.nn.Module, optimizer: Any, lr_scheduler: Any) -> OptimizerKicks:
    """Kicks on the torch optimizer inside Accelerate's wrapper, and on the lr scheduler."""
    wrapper, inner = optimizer, optimizer
    while isinstance(getattr(inner, "optimizer", None), torch.optim.Optimizer):
        inner = inner.optimizer
    blocker = ""
    if getattr(wrapper, "scaler", None) is not None:
        blocker = "the Trainer's fp16 gradient scaler calls the optimizer's own step"
    scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # Accelerate's wrapper
    return OptimizerKicks(model, inner, [scheduler] if scheduler is not None else [], blocker)


def _mlflow_run(args: TrainingArguments, state: TrainerState) -> MlflowDecisions | None:
    """The Trainer's MLflow run when it reports to MLflow (its ``MLflowCallback`` opened the
    run in ``on_train_begin``, before user callbacks); ``None`` otherwise."""
    report_to = [args.report_to] if isinstance(args.report_to, str) else args.report_to or []
    if "mlflow" not in report_to or not state.is_world_process_zero:
        return None
    import mlflow

    active = mlflow.active_run()
    if active is None:
        return None
    return MlflowDecisions(mlflow.MlflowClient(), active.info.run_id)
