"""Kicks by restart, for trainables that do not poll the control channel: PBT's trick with
public Tune calls.

A trainable that polls the channel reports ``control/acked_id`` and gets each KICK/ROLLBACK
live. One that does not gets it here: the kick becomes a config change
(``grokschedule.core.commands.config_change`` by default), and at the next result that carries a
checkpoint the trial is paused and resumed from that checkpoint under the new config
(``restart_with_config``). A kick with a ``duration_steps`` window is undone the same way once the
window has passed (restart with the old values), so it means the same on both paths; a ROLLBACK
restarts with the pre-kick values, but the weights go on from the latest checkpoint (Tune resumes
from that one, not from the one before the kick). A ``lora_rank`` kick becomes ``lm_lora_rank``
× factor, which the DeepSpeed trainer takes by growing the restored adapter; its rollback by
restart cannot shrink that adapter back (the live channel's rollback can). A kick with no config
equivalent (Grokfast, ⊥Grad, ...) is refused with a ``ValueError``, and the scheduler tells the
kick policy not to choose that kind for the trial again. ``RestartFallback`` also keeps the
acknowledgements the trainable cannot write (``control/acked_id``, ``control/applied_step``), so
the kick policy reads both paths alike.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ray.tune.result import DONE, SHOULD_CHECKPOINT
from ray.tune.schedulers import TrialScheduler

from grokschedule.core.commands import ROLLBACK, Command, config_change
from grokschedule.core.contract import ACKED_ID, APPLIED_STEP
from grokschedule.core.kicks import Kick

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial

logger = logging.getLogger(__name__)

# What a kick becomes in a trial's config: (kick, config) -> changed keys, ValueError if none.
ConfigChange = Callable[[Kick, Mapping[str, Any]], dict[str, Any]]


@dataclass
class _Restart:
    """A config change waiting for a result that carries a checkpoint."""

    change: dict[str, Any]
    label: str  # how the log names it: "kick 3 (lr_multiply)", "rollback 4"
    command_id: int | None = None  # acknowledged once applied; None for a window's end
    undo: dict[str, Any] = field(default_factory=dict)  # the values a kick replaces
    window: int | None = None  # a kick's duration_steps: undone this long after it applied
    ends: _Restart | None = None  # the kick a window's end or a rollback undoes
    until: float | None = None  # a kick in force: the step from which its window is over


@dataclass
class _Restarts:
    """One trial's kicks by restart: what waits, what is in force, what to acknowledge."""

    pending: _Restart | None = None
    in_force: list[_Restart] = field(default_factory=list)  # kicks applied, not undone yet
    acks: dict[str, float] = field(default_factory=dict)


class RestartFallback:
    """The restart path of every trial that does not poll the control channel (module
    docstring): ``deliver`` takes a command, ``restart_if_due`` carries it out once a result
    brings a checkpoint, ``acks`` says what the trainable would have acknowledged.

    Args:
        change: What a kick becomes in a trial's config; ``ValueError`` for a kick it cannot
            express.
    """

    def __init__(self, change: ConfigChange = config_change) -> None:
        self._change = change
        self._trials: dict[str, _Restarts] = {}

    def covers(self, trial_id: str) -> bool:
        """The trial already had a command by restart; it stays on this path."""
        return trial_id in self._trials

    def acks(self, trial_id: str) -> dict[str, float]:
        """``control/acked_id`` and ``control/applied_step`` of the last command carried out."""
        restarts = self._trials.get(trial_id)
        return {} if restarts is None else dict(restarts.acks)

    def deliver(
        self, trial: Trial, command: Command, step: float, result: Mapping[str, Any]
    ) -> str:
        """Plan ``command``, decided at ``step`` on ``result``, as a restart; returns how it will
        be carried out, for the decision's reason. ``ValueError`` for a kick the config cannot
        express (nothing is planned then)."""
        restarts = self._trials.setdefault(trial.trial_id, _Restarts())
        if command.type == ROLLBACK:
            return self._roll_back(restarts, command.id, step)
        kick = command.kick
        assert kick is not None  # a kick command carries its Kick
        change = self._change(kick, trial.config)
        undo = {key: trial.config.get(key) for key in change}
        label = f"kick {command.id} ({kick.kind})"
        restarts.pending = _Restart(change, label, command.id, undo, kick.duration_steps)
        note = f"applied by restart with config {change}"
        note += " now" if result.get(SHOULD_CHECKPOINT) else " at the next result with a checkpoint"
        if kick.duration_steps is not None:
            note += f", undone by restart after {kick.duration_steps} steps"
        return note

    def restart_if_due(
        self,
        tune_controller: TuneController,
        trial: Trial,
        result: Mapping[str, Any],
        step: float,
    ) -> str:
        """``TrialScheduler.PAUSE`` to resume the trial under its pending config change, once a
        result carries the checkpoint to resume from; until then the change waits
        (``CONTINUE``). A kick's window ends the same way, with a restart under the values it
        replaced."""
        restarts = self._trials.get(trial.trial_id)
        if restarts is None:
            return TrialScheduler.CONTINUE
        if restarts.pending is None:
            over = [k for k in restarts.in_force if k.until is not None and step >= k.until]
            if over:
                label = f"end of the {over[0].label} window"
                restarts.pending = _Restart(dict(over[0].undo), label, ends=over[0])
        pending = restarts.pending
        if pending is None or not result.get(SHOULD_CHECKPOINT) or result.get(DONE):
            return TrialScheduler.CONTINUE
        decision = restart_with_config(
            tune_controller, trial, result, {**trial.config, **pending.change}
        )
        restarts.pending = None
        if pending.command_id is not None:
            restarts.acks = {ACKED_ID: pending.command_id, APPLIED_STEP: step}
        if pending.ends is not None:
            restarts.in_force = [k for k in restarts.in_force if k is not pending.ends]
        else:
            pending.until = None if pending.window is None else step + pending.window
            restarts.in_force.append(pending)
        logger.info(
            "GrokScheduler: trial %s step %.0f: %s: restart with config %s from this checkpoint",
            trial.trial_id,
            step,
            pending.label,
            pending.change,
        )
        return decision

    def get_state(self) -> dict[str, Any]:
        return {"trials": copy.deepcopy(self._trials)}

    def set_state(self, state: Mapping[str, Any]) -> None:
        self._trials = copy.deepcopy(dict(state["trials"]))

    @staticmethod
    def _roll_back(restarts: _Restarts, command_id: int, step: float) -> str:
        kicked = restarts.in_force[-1] if restarts.in_force else None
        if kicked is not None:  # the policy rolls back the last kick applied
            label = f"rollback {command_id} of {kicked.label}"
            restarts.pending = _Restart(dict(kicked.undo), label, command_id, ends=kicked)
            note = f"applied by restart with config {kicked.undo}"
        else:  # its window already ended: the pre-kick values are back
            restarts.acks = {ACKED_ID: command_id, APPLIED_STEP: step}
            note = "nothing to restart: the kick's window already ended"
        return (
            f"{note} (the trainable does not poll the control channel: the weights go on from "
            "its latest checkpoint)"
        )


def restart_with_config(
    tune_controller: TuneController,
    trial: Trial,
    result: Mapping[str, Any],
    new_config: Mapping[str, Any],
    experiment_tag: str | None = None,
) -> str:
    """PBT-style fallback for trainables that do not poll the channel: restart ``trial`` from
    the checkpoint reported with ``result`` under ``new_config``. Call from ``on_trial_result``
    and return what it returns (``TrialScheduler.PAUSE``).

    PBT's ``_exploit`` pauses with ``should_checkpoint=False`` and writes the checkpoint to
    resume from into a private field, after a blocking ``ray.get`` of a save. Here Tune does the
    same with public calls and without blocking the driver: on PAUSE it saves the trial (for a
    function trainable: hands back the checkpoint reported with this result), registers that
    checkpoint, then pauses with ``should_checkpoint=False``; the scheduler's
    ``choose_trial_to_run`` later starts it again from that checkpoint with ``trial.config``,
    which now is ``new_config``. Only a result that carried a checkpoint can be resumed without
    losing the steps since the last one, so any other is a ``ValueError``; keep the change
    pending until such a result arrives. A paused trial counts against
    ``max_concurrent_trials`` and waits behind PENDING trials (FIFO).
    """
    if not result.get(SHOULD_CHECKPOINT):
        raise ValueError(
            f"trial {trial.trial_id}: restart_with_config needs a result that carries a "
            "checkpoint; keep the change until the trainable reports one"
        )
    if result.get(DONE):
        raise ValueError(f"trial {trial.trial_id} is done: nothing to restart")
    trial.set_config(dict(new_config))
    if experiment_tag is not None:
        trial.set_experiment_tag(experiment_tag)
    return TrialScheduler.PAUSE
