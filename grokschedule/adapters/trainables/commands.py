"""Command sources that travel to the Train workers in ``train_loop_config`` (under
``COMMANDS_KEY``), for the loop's ``poll_commands``.

Free of torch and DeepSpeed on purpose: Ray Train V2 unpickles the loop config in the Train
controller too (``TrainRunContext.train_loop_config``), so this module is what the controller
imports for them — were they defined in ``train_loop``, every trial's controller would load
DeepSpeed and the trainer only to hold them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from grokschedule.adapters.control_channel import ControlClient
from grokschedule.core.commands import SweepKey

if TYPE_CHECKING:
    from grokschedule.training.deepspeed.engine import EngineCommand

# The key in ``train_loop_config`` under which a command source travels (see ``poll_commands``).
COMMANDS_KEY = "_grokschedule_commands"


class ScriptedCommands:
    """A command source that plays a fixed script ``{step: [command, ...]}``: for planned
    interventions, ablations and tests. Picklable, so it travels to the workers."""

    def __init__(self, script: Mapping[int, Sequence[EngineCommand]]) -> None:
        self.script = {int(step): list(commands) for step, commands in script.items()}

    def __call__(self, step: int) -> list[EngineCommand]:
        """Everything scripted at or before ``step`` not yet handed out (polls may skip steps)."""
        due = sorted(s for s in self.script if s <= step)
        return [command for s in due for command in self.script.pop(s)]


class ChannelCommands:
    """The command source for a trial under ``GrokScheduler(interventions=...)``: what the
    scheduler posted to the control channel for ``trial_id``, signed with the sweep's ``key``
    and validated (the rest is refused and counted, ``metrics``). The loop decides when to ask
    (every ``poll_every`` steps), so the client asks the channel on every call. Picklable before
    its first poll, which is how it travels to the workers."""

    def __init__(self, trial_id: str, key: SweepKey) -> None:
        self.client = ControlClient(trial_id, poll_every=1, key=key)

    def __call__(self, step: int) -> list[EngineCommand]:
        return list(self.client.poll(step))
