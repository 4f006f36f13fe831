"""The live control channel: the scheduler posts commands, the trainer polls and applies them.

Protocol. A command is a plain dict, ``{"id": int, "type": "kick", "kick": Kick.to_dict()}`` or
``{"id": int, "type": "rollback"}``; ``Command.from_dict`` validates it (``ValueError`` on
anything else). Ids grow strictly per trial. The scheduler calls ``ControlChannel.post`` from
``on_trial_result``, which validates on the driver and sends without waiting; the trainer calls
``ControlClient.poll(step)`` between optimizer steps, which asks the channel at most every
``poll_every`` steps and hands back the commands posted since. Acknowledgements travel back in the
metrics stream, not through the channel, so the scheduler reads them in the same result as the
metrics they explain (see ``tasks.training.ModularTrainer.control_metrics``):

- ``control/acked_id``: the id of the last command applied, -1 before any;
- ``control/applied_step``: the optimizer step at which it took effect (the ``step`` the trainer
  had reached: the first step under a kick is ``applied_step + 1`` in ``step`` units);
- ``control/rollbacks``, ``control/kicks_active``: counts.

Delivery is at most once: the channel drops a trial's commands when they are polled, so a command
polled by a worker that dies before its next checkpoint is gone. The scheduler sees that as
``control/acked_id`` not advancing (or going back) and may post it again under a new id.

The channel is one named actor per Ray namespace (``CHANNEL_NAME``), made with
``get_if_exists=True`` by the first ``post``, so the Tune driver owns it and it ends with the
sweep's driver; clients only look it up, since an actor made by a trial's worker would die with
that worker. It is not detached: commands are meaningless once the driver that decided them is
gone, and a detached actor would outlive crashed sweeps on a shared cluster.

Trainables that do not poll the channel get kicks PBT-style instead: ``config_change`` says what
a kick becomes in a config, ``restart_with_config`` restarts the trial under it.

Ray is imported where it is used, so the Ray-free trainer and benchmark can use ``Command``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from grokschedule.kicks import BATCH_SIZE, LR_MULTIPLY, SGD_SWITCH, WEIGHT_DECAY, Kick

if TYPE_CHECKING:
    from ray import ObjectRef
    from ray.actor import ActorHandle
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial

logger = logging.getLogger(__name__)
CHANNEL_NAME = "grokschedule-control"
KICK = "kick"
ROLLBACK = "rollback"
COMMAND_TYPES = (KICK, ROLLBACK)
_KEYS = {KICK: {"id", "type", "kick"}, ROLLBACK: {"id", "type"}}


@dataclass(frozen=True)
class Command:
    """One validated command; ``kick`` is set exactly for ``type == "kick"``."""

    id: int
    type: str
    kick: Kick | None = None

    def __post_init__(self) -> None:
        if isinstance(self.id, bool) or not isinstance(self.id, int) or self.id < 0:
            raise ValueError(f"command id must be an int >= 0, got {self.id!r}")
        if self.type not in COMMAND_TYPES:
            raise ValueError(f"command type must be one of {COMMAND_TYPES}, got {self.type!r}")
        if (self.type == KICK) != isinstance(self.kick, Kick):
            raise ValueError(f"command {self.id}: a Kick is required for 'kick' and only there")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Command:
        """Validate a command dict; every problem is a ``ValueError`` naming the command."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a command must be a dict, got {type(data).__name__}")
        kind = data.get("type")
        if kind not in COMMAND_TYPES:
            raise ValueError(f"command type must be one of {COMMAND_TYPES}, got {kind!r}")
        if set(data) != _KEYS[kind]:
            raise ValueError(
                f"a {kind} command has exactly the keys {sorted(_KEYS[kind])}, got {sorted(data)}"
            )
        kick = None
        if kind == KICK:
            if not isinstance(data["kick"], Mapping):
                raise ValueError(f"command {data['id']!r}: 'kick' must be a Kick.to_dict() dict")
            try:
                kick = Kick.from_dict(data["kick"])
            except ValueError as error:
                raise ValueError(f"command {data['id']!r}: malformed kick: {error}") from None
        return cls(data["id"], kind, kick)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "type": self.type}
        if self.kick is not None:
            data["kick"] = self.kick.to_dict()
        return data


@dataclass(frozen=True)
class ControlState:
    """What a trainer reports back about commands; never rolled back, so it only grows."""

    acked_id: int = -1
    applied_step: int = -1
    rollbacks: int = 0

    def metrics(self, kicks_active: int) -> dict[str, int]:
        """The acknowledgement keys (module docstring) every report of a polling trainer
        carries; their presence is how the scheduler knows the trainable polls."""
        return {
            "control/acked_id": self.acked_id,
            "control/applied_step": self.applied_step,
            "control/rollbacks": self.rollbacks,
            "control/kicks_active": kicks_active,
        }


class _Mailbox:
    """The actor's body: per-trial queues of command dicts."""

    def __init__(self) -> None:
        self._queues: dict[str, list[dict[str, Any]]] = {}

    def post(self, trial_id: str, command: dict[str, Any]) -> None:
        self._queues.setdefault(trial_id, []).append(command)

    def take(self, trial_id: str) -> list[dict[str, Any]]:
        return self._queues.pop(trial_id, [])

    def discard(self, trial_id: str) -> None:
        self._queues.pop(trial_id, None)


class ControlChannel:
    """Scheduler side. Cheap to build and to pickle (Tune pickles its scheduler): the actor is
    made or found on the first ``post``, once Ray is up."""

    def __init__(self, name: str = CHANNEL_NAME, namespace: str | None = None) -> None:
        self.name, self.namespace = name, namespace
        self._handle: ActorHandle[_Mailbox] | None = None
        self._last_id: dict[str, int] = {}

    def post(self, trial_id: str, command: Mapping[str, Any] | Command) -> None:
        """Queue ``command`` for ``trial_id`` without waiting for the actor.

        Validated here, on the driver, so a bad command fails in the scheduler that made it
        rather than in a trial; ids must grow per trial.
        """
        parsed = command if isinstance(command, Command) else Command.from_dict(command)
        last = self._last_id.get(trial_id, -1)
        if parsed.id <= last:
            raise ValueError(
                f"command ids must grow per trial: {parsed.id} after {last} for {trial_id}"
            )
        self._last_id[trial_id] = parsed.id
        self._actor().post.remote(trial_id, parsed.to_dict())

    def discard(self, trial_id: str) -> None:
        """Drop a finished trial's undelivered commands (call from ``on_trial_complete``)."""
        self._last_id.pop(trial_id, None)
        if self._handle is not None:
            self._handle.discard.remote(trial_id)

    def _actor(self) -> ActorHandle[_Mailbox]:
        if self._handle is None:
            import ray

            mailbox = ray.remote(_Mailbox).options(
                name=self.name,
                namespace=self.namespace,
                get_if_exists=True,
                num_cpus=0,  # a queue must never hold a CPU a trial could use
            )
            self._handle = cast("ActorHandle[_Mailbox]", mailbox.remote())
        return self._handle

    def __getstate__(self) -> dict[str, Any]:
        # An actor handle from a pickled scheduler would point into a cluster that may be gone.
        return {**self.__dict__, "_handle": None}


class ControlClient:
    """Trainer side: ``poll(step)`` returns the commands posted for this trial since the last
    poll, asking the actor at most every ``poll_every`` steps. Until the scheduler has posted
    anything the actor may not exist yet; that reads as no commands.

    A slow answer never fails the trial: after ``timeout_s`` the poll returns nothing and keeps
    the request, whose commands (the actor has already handed them over) come with a later poll
    instead of being lost. On a loaded cluster a 30 s ``ray.get`` timeout did fail trials here.
    """

    def __init__(
        self,
        trial_id: str,
        poll_every: int,
        name: str = CHANNEL_NAME,
        namespace: str | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        if isinstance(poll_every, bool) or not isinstance(poll_every, int) or poll_every <= 0:
            raise ValueError(f"poll_every must be an int > 0, got {poll_every!r}")
        self.trial_id, self.poll_every = trial_id, poll_every
        self.name, self.namespace, self.timeout_s = name, namespace, timeout_s
        self._handle: ActorHandle[_Mailbox] | None = None
        self._pending: ObjectRef[list[dict[str, Any]]] | None = None
        self._next_poll: int | None = None

    def poll(self, step: int) -> list[dict[str, Any]]:
        if self._next_poll is not None and step < self._next_poll:
            return []
        self._next_poll = step + self.poll_every
        import ray

        if self._pending is None:
            if self._handle is None:
                try:
                    self._handle = ray.get_actor(self.name, namespace=self.namespace)
                except ValueError:  # not made yet: nothing was ever posted
                    return []
            self._pending = self._handle.take.remote(self.trial_id)
        ready, _ = ray.wait([self._pending], timeout=self.timeout_s)
        if not ready:
            logger.warning(
                "control channel: no answer for trial %s within %.0f s at step %d; its "
                "commands will be collected at the next poll",
                self.trial_id,
                self.timeout_s,
                step,
            )
            return []
        request, self._pending = self._pending, None
        commands: list[dict[str, Any]] = ray.get(request)
        return commands


RESTART_KINDS = (LR_MULTIPLY, WEIGHT_DECAY, BATCH_SIZE, SGD_SWITCH)


def config_change(kick: Kick, config: Mapping[str, Any]) -> dict[str, Any]:
    """The config keys that carry ``kick`` out in a trainable restarted under
    ``{**config, **change}``, for a trainable that reads the usual names: ``lr``,
    ``weight_decay``, ``batch_size``, ``optimizer`` and ``momentum``.

    Only kinds that are a hyperparameter (``RESTART_KINDS``) have a config equivalent; gradient
    transforms and an lr cycle act inside the step and need the live channel. A kick whose key
    the config does not hold, or holds as ``None`` (a full-batch run has no larger batch), is a
    ``ValueError`` too: the scheduler cannot know the value to multiply. The change lasts until
    the next restart, so ``duration_steps`` is the caller's to honour.
    """
    if kick.kind not in RESTART_KINDS:
        raise ValueError(
            f"a {kick.kind} kick cannot be a config change (only {RESTART_KINDS}); "
            "it needs a trainable that polls the control channel"
        )
    params = kick.params
    if kick.kind == SGD_SWITCH:
        return {"optimizer": "sgd", "lr": params["lr"], "momentum": params["momentum"]}

    def current(key: str) -> float:
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(
                f"a {kick.kind} kick needs a number under {key!r} in the trial's config, "
                f"got {value!r}"
            )
        return float(value)

    if kick.kind == LR_MULTIPLY:
        return {"lr": current("lr") * params["factor"]}
    if kick.kind == WEIGHT_DECAY:
        return {"weight_decay": current("weight_decay") * params["factor"]}
    change: dict[str, Any] = {"batch_size": int(current("batch_size")) * int(params["factor"])}
    if params["scale_lr"]:
        change["lr"] = current("lr") * kick.lr_factor(0)
    return change


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
    from ray.tune.result import DONE, SHOULD_CHECKPOINT
    from ray.tune.schedulers import TrialScheduler

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
