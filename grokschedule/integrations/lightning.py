"""GrokScheduler's policy inside a Lightning ``Trainer``.

``GrokLightningCallback`` judges the run at the end of each validation, from
``trainer.callback_metrics`` (what the module logged with ``self.log``) plus a weight norm it
computes from the module, and acts in the Trainer's own terms:

- STOP: ``trainer.should_stop``, the reason in the log;
- EXTEND: the fit loop's ``max_steps`` raised, up to ``max_t + max_extension`` (and the steps
  ``max_epochs`` leaves, when it is set);
- KICK / ROLLBACK: on ``trainer.optimizers[0]`` and its lr schedulers in place, behind a
  rollback point in ``default_root_dir/grok_rollback`` (``grokschedule.integrations.common``).

The decision's numbers (``scheduler/score`` and the signals behind it) and ``weight_norm`` go to
every logger at the trainer's step; with an ``MLFlowLogger``, its run gets the Tune path's tags
and ``grok/decisions.json`` as well. Validate at ``max_t`` (``val_check_interval`` dividing
it, ``check_val_every_n_epoch=None``) so the budget rule sees it. Under DDP, log what the
callback reads with ``sync_dist=True`` so every rank decides alike.

The run's scheduler state goes into each checkpoint through the callback's ``state_dict``
(Lightning stores it under the callback's ``state_key``), and ``fit(ckpt_path=...)`` hands it
back to ``load_state_dict`` before the optimizers exist; ``on_train_start``, once they are
restored, goes on from it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import MLFlowLogger

from grokschedule.integrations.common import (
    GrokRun,
    GrokSettings,
    MlflowDecisions,
    OptimizerKicks,
    decision_record,
    numbers,
    rollback_file,
    weight_norm,
)
from grokschedule.integrations.run_state import pack_state, unpack_state

logger = logging.getLogger("grokschedule.integrations")

ROLLBACK_DIR = "grok_rollback"  # inside trainer.default_root_dir
_HINT = (
    "Log them from the LightningModule with self.log (the train metrics in training_step, the "
    "validation ones in validation_step), or pass the names it logs (e.g. val_loss='val/loss'), "
    "or None for one it does not log."
)


class GrokLightningCallback(pl.Callback):
    """GrokScheduler's decisions for one Lightning ``fit``; see the module docstring.

    The arguments are GrokScheduler's, with its defaults and metric names (``val_acc``,
    ``train_loss``, ``train_acc``, ``val_loss``; ``weight_norm`` is the key the callback logs
    the module's weight norm under, ``None``: not computed). ``max_t=None`` is the Trainer's
    ``max_steps``. ``interventions`` may name the kinds ``lr_multiply``, ``lr_cycle``,
    ``weight_decay``, ``sgd_switch``, ``grokfast``, ``grad_noise`` and ``ortho_grad``.
    ``rollback_dir`` defaults to ``default_root_dir/grok_rollback``. After ``fit``, ``run``
    holds the policy, the decisions and what each kick changed. ``fit(ckpt_path=...)`` goes
    on from the state saved in the checkpoint (module docstring); a checkpoint without one
    (saved before this callback) starts the policy afresh, with a warning.
    """

    def __init__(
        self,
        metric: str = "val_acc",
        mode: str = "max",
        *,
        max_t: float | None = None,
        grok_threshold: float = 0.95,
        max_extension: float | None = None,
        patience_factor: float = 20.0,
        min_patience: float | None = None,
        stop_on_grok: bool = True,
        train_loss: str | None = "train_loss",
        train_acc: str | None = "train_acc",
        val_loss: str | None = "val_loss",
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
        self._capacity = math.inf
        self._stepped = 0  # the global step after the last optimizer step seen
        self._saved: dict[str, Any] | None = None  # from the checkpoint, until on_train_start

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {} if self.run is None else {"run": pack_state(self.run)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._saved = unpack_state(state_dict["run"], f"{type(self).__name__} checkpoint state")

    # -- Trainer events ---------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        limit = trainer.max_steps if trainer.max_steps > 0 else None
        max_t = self.settings.budget(limit, "max_steps")
        epoch_loop = trainer.fit_loop.epoch_loop
        if epoch_loop.max_steps == -1 or max_t < epoch_loop.max_steps:
            epoch_loop.max_steps = int(max_t)
        self._capacity = _loop_capacity(trainer)
        kicks = None
        if self.settings.interventions is not None:
            kicks = _optimizer_kicks(trainer, pl_module)
        directory = self.rollback_dir or Path(trainer.default_root_dir) / ROLLBACK_DIR
        saved, self._saved = self._saved, None
        if saved is None and trainer.ckpt_path is not None:
            logger.warning(
                "grokschedule: resumed from %s without a scheduler state: the policy starts "
                "afresh, its patience and kick budget with it (a checkpoint saved before "
                "grokschedule kept this state has none)",
                trainer.ckpt_path,
            )
        self.run = self.settings.run(
            max_t,
            pl_module,
            kicks,
            rollback_file(directory, trainer.global_rank),
            _mlflow_run(trainer),
            saved,
        )
        if self.run.extended_to is not None:
            _extend(trainer, self.run.extended_to, self._capacity)
        self._stepped = trainer.global_step

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.run is not None:
            self.run.before_step(trainer.global_step)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # After the optimizer step and the "step"-interval schedulers; none while accumulating.
        if self.run is not None and trainer.global_step > self._stepped:
            self.run.after_step(trainer.global_step - 1)
            self._stepped = trainer.global_step

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run, names = self.run, self.settings.names
        if run is None or trainer.sanity_checking or trainer.global_step == 0:
            return
        logged = numbers(trainer.callback_metrics)
        extra: dict[str, float] = {}
        if names.weight_norm:
            extra[names.weight_norm] = weight_norm(pl_module)
        decision = run.observe({**logged, **extra}, trainer.global_step)
        if decision is None:
            return

        def stop() -> None:
            trainer.should_stop = True

        def extend(limit: float) -> float:
            return _extend(trainer, limit, self._capacity)

        decision = run.carry_out(decision, stop=stop, extend=extend, metrics=extra)
        record = decision_record(decision)
        values = {k: float(v) for k, v in record.items() if not isinstance(v, str)}
        for logger in trainer.loggers:
            if not isinstance(logger, MLFlowLogger):  # its run gets them from run.mlflow
                logger.log_metrics({**values, **extra}, step=trainer.global_step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.run is not None:
            self.run.finish(trainer.global_step)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self.run is not None:
            self.run.finish(trainer.global_step, error=repr(exception))


def _extend(trainer: pl.Trainer, limit: float, capacity: float) -> float:
    """Move the fit loop's ``max_steps`` to ``limit`` (at most ``capacity``); the one set."""
    epoch_loop = trainer.fit_loop.epoch_loop
    epoch_loop.max_steps = max(epoch_loop.max_steps, int(min(limit, capacity)))
    return float(epoch_loop.max_steps)


def _loop_capacity(trainer: pl.Trainer) -> float:
    """The optimizer steps ``max_epochs`` leaves (unbounded when it is -1 or unset)."""
    epochs = trainer.max_epochs
    if epochs is None or epochs < 0 or math.isinf(trainer.num_training_batches):
        return math.inf
    per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
    return float(epochs * per_epoch)


def _optimizer_kicks(trainer: pl.Trainer, pl_module: pl.LightningModule) -> OptimizerKicks:
    if len(trainer.optimizers) != 1:
        raise ValueError(
            f"interventions act on one optimizer; the module configured {len(trainer.optimizers)}"
        )
    optimizer = trainer.optimizers[0]
    schedulers = [
        config.scheduler
        for config in trainer.lr_scheduler_configs
        if getattr(config.scheduler, "optimizer", None) is optimizer
    ]
    return OptimizerKicks(pl_module, optimizer, schedulers)


def _mlflow_run(trainer: pl.Trainer) -> MlflowDecisions | None:
    if not trainer.is_global_zero:
        return None
    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger) and logger.run_id is not None:
            return MlflowDecisions(logger.experiment, logger.run_id)
    return None
