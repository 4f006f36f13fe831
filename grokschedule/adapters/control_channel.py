"""The live control channel: a named Ray actor the scheduler posts commands to and the trainer
polls between optimizer steps. What a command says is ``grokschedule.core.commands``.

``ControlChannel.post`` (scheduler, in ``on_trial_result``) validates on the driver, signs with
the sweep's key and sends without waiting; ``ControlClient.poll(step)`` (trainer) asks the channel
at most every ``poll_every`` steps and hands back the commands posted since that its
``CommandGate`` admits (``grokschedule.core.commands``: signed with this sweep's key, for this
trial, newer than any before). Anything else is refused with a warning that names the reason and
the ids, counted in ``control/refused``, and never applied.

The key reaches the trainables in their config, under ``CONTROL_KEY``: ``GrokScheduler`` puts its
channel's key there when a trial is added (``key_from_config`` reads it back). Its ``repr`` hides
the secret, and the MLflow callback leaves the entry out of the trial's params; Tune's pickled
experiment state holds it, as it holds the rest of the config.

Delivery is exactly once across worker restarts: the channel keeps a command it handed out
until the trainer reports a checkpoint that holds its acknowledgement (``ControlClient.
checkpointed``), and hands every command still kept to a client that starts afresh (a restarted
worker). So a command that a worker polled, or even applied, but died before checkpointing is
polled again by its successor, which resumed from a checkpoint from before it, and applied once;
one the restored checkpoint already acknowledges is not handed out again. Each client is handed
a command once; a refused one is dropped at the next poll. A trainer that resumes from an
*older* checkpoint than its last (the newest was corrupt) does not get back commands that a
newer checkpoint had acknowledged.

The channel is one named actor per Ray namespace (``CHANNEL_NAME``), made with
``get_if_exists=True`` by the first ``post``, so the Tune driver owns it and it ends with the
sweep's driver; clients only look it up, since an actor made by a trial's worker would die with
that worker. It is not detached: commands are meaningless once the driver that decided them is
gone, and a detached actor would outlive crashed sweeps on a shared cluster.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from grokschedule.core.commands import Command, CommandGate, Refusal, SweepKey

if TYPE_CHECKING:
    from ray import ObjectRef
    from ray.actor import ActorHandle

logger = logging.getLogger(__name__)
CHANNEL_NAME = "grokschedule-control"
CONTROL_KEY = "_grokschedule_control"  # the trial config entry that holds the sweep's key


def key_from_config(config: Mapping[str, Any]) -> SweepKey:
    """The sweep's key from a trial config; ``ValueError`` if it is not there."""
    key = config.get(CONTROL_KEY)
    if not isinstance(key, SweepKey):
        raise ValueError(
            f"a trial that polls the control channel needs the sweep's SweepKey under "
            f"config[{CONTROL_KEY!r}] (GrokScheduler(interventions=...) puts it there; with your "
            f"own ControlChannel, put its .key there), got {type(key).__name__}"
        )
    return key


def _command_id(envelope: object) -> int | None:
    """The command id an envelope claims (None if malformed); ``CommandGate`` checks the claim."""
    command = envelope.get("command") if isinstance(envelope, Mapping) else None
    claimed = command.get("id") if isinstance(command, Mapping) else None
    return claimed if isinstance(claimed, int) and not isinstance(claimed, bool) else None


class _Log:
    """One trial's envelopes by sequence number, and how far each reader has been handed them."""

    def __init__(self) -> None:
        self.entries: dict[int, object] = {}
        self.next_seq = 0
        self.readers: dict[str, int] = {}  # reader -> the last sequence number handed to it
        self.handed = -1  # the last sequence number handed to any reader


class _Mailbox:
    """The actor's body: per-trial logs of signed command envelopes (see the module docstring)."""

    def __init__(self) -> None:
        self._logs: dict[str, _Log] = {}

    def post(self, trial_id: str, envelope: object) -> None:
        log = self._logs.setdefault(trial_id, _Log())
        log.entries[log.next_seq] = envelope
        log.next_seq += 1

    def take(
        self, trial_id: str, reader: str, checkpointed: int, refused: list[int]
    ) -> list[tuple[int, object]]:
        """What ``reader`` has not been handed yet, as ``(sequence number, envelope)``, after
        dropping the ``refused`` entries and those handed out before whose id is at or below
        ``checkpointed`` (acknowledged in a checkpoint: no restarted worker needs them)."""
        log = self._logs.get(trial_id)
        if log is None:
            return []
        for seq in refused:
            log.entries.pop(seq, None)
        for seq, envelope in list(log.entries.items()):
            command_id = _command_id(envelope)
            if seq <= log.handed and command_id is not None and command_id <= checkpointed:
                del log.entries[seq]
        cursor = log.readers.get(reader, -1)
        log.readers[reader] = log.handed = log.next_seq - 1
        return [(seq, envelope) for seq, envelope in log.entries.items() if seq > cursor]

    def discard(self, trial_id: str) -> None:
        self._logs.pop(trial_id, None)


class ControlChannel:
    """Scheduler side. Cheap to build and to pickle (Tune pickles its scheduler): the actor is
    made or found on the first ``post``, once Ray is up. ``key`` signs every command (a fresh
    one per channel by default); the trainables must be given the same key."""

    def __init__(
        self, name: str = CHANNEL_NAME, namespace: str | None = None, key: SweepKey | None = None
    ) -> None:
        self.name, self.namespace = name, namespace
        self.key = SweepKey.generate() if key is None else key
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
        self._actor().post.remote(trial_id, self.key.sign(trial_id, parsed))

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
    poll that ``key`` authenticates, asking the actor at most every ``poll_every`` steps. Until
    the scheduler has posted anything the actor may not exist yet; that reads as no commands.
    ``acked_id`` is the trainer's last applied command (after a restore): nothing at or below it
    is admitted again. ``metrics()`` is the ``control/refused`` count for each report. Call
    ``checkpointed(acked_id)`` after each report whose checkpoint holds ``acked_id``, so the
    channel can forget the commands up to it; until then it keeps them for a restarted worker.

    A slow answer never fails the trial: after ``timeout_s`` the poll returns nothing and keeps
    the request, whose commands (the actor has already handed them over) come with a later poll
    instead of being lost. On a loaded cluster a 30 s ``ray.get`` timeout did fail trials here.
    """

    def __init__(
        self,
        trial_id: str,
        poll_every: int,
        key: SweepKey,
        name: str = CHANNEL_NAME,
        namespace: str | None = None,
        timeout_s: float = 5.0,
        acked_id: int = -1,
    ) -> None:
        if isinstance(poll_every, bool) or not isinstance(poll_every, int) or poll_every <= 0:
            raise ValueError(f"poll_every must be an int > 0, got {poll_every!r}")
        self.gate = CommandGate(key, trial_id, acked_id)
        self.trial_id, self.poll_every = trial_id, poll_every
        self.name, self.namespace, self.timeout_s = name, namespace, timeout_s
        self._handle: ActorHandle[_Mailbox] | None = None
        self._pending: ObjectRef[list[tuple[int, object]]] | None = None
        self._next_poll: int | None = None
        # Drawn at the first poll, so each worker that unpickles this client reads afresh.
        self._reader: str | None = None
        self._checkpointed = acked_id
        self._refused: list[int] = []  # sequence numbers refused, for the channel to drop

    def metrics(self) -> dict[str, int]:
        return self.gate.metrics()

    def acknowledged(self, acked_id: int) -> None:
        """The trainer applied ``acked_id`` by other means (restored from a checkpoint)."""
        self.gate.acknowledged(acked_id)
        self.checkpointed(acked_id)

    def checkpointed(self, acked_id: int) -> None:
        """A checkpoint holding ``acked_id`` was reported: a restarted worker resumes at or
        after it, so the channel may forget the commands up to it (at the next poll)."""
        self._checkpointed = max(self._checkpointed, acked_id)

    def poll(self, step: int) -> list[Command]:
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
            if self._reader is None:
                self._reader = uuid.uuid4().hex
            refused, self._refused = self._refused, []
            self._pending = self._handle.take.remote(
                self.trial_id, self._reader, self._checkpointed, refused
            )
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
        admitted = []
        for seq, envelope in ray.get(request):
            verdict = self.gate.admit(envelope)
            if isinstance(verdict, Refusal):
                self._refused.append(seq)
                logger.warning(
                    "control channel: trial %s (sweep %s) refused a command at step %d, "
                    "not applied: %s",
                    self.trial_id,
                    self.gate.key.sweep_id,
                    step,
                    verdict.describe(),
                )
            else:
                admitted.append(verdict)
        return admitted
