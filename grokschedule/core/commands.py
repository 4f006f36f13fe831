"""Commands from the policy to a trainer, as data: what a KICK or ROLLBACK says, what the trainer
acknowledges, and what a kick becomes in a config when a trainable cannot take it live.

Protocol. A command is ``Command(id, type, kick)``, on the wire the plain dict
``{"id": int, "type": "kick", "kick": Kick.to_dict()}`` or ``{"id": int, "type": "rollback"}``;
``Command.from_dict`` validates it (``ValueError`` on anything else). Ids grow strictly per trial.
Acknowledgements travel back in the metrics stream, not through the channel, so the scheduler
reads them in the same result as the metrics they explain (``ControlState.metrics``):

- ``control/acked_id``: the id of the last command applied, -1 before any;
- ``control/applied_step``: the optimizer step at which it took effect (the ``step`` the trainer
  had reached: the first step under a kick is ``applied_step + 1`` in ``step`` units);
- ``control/rollbacks``, ``control/kicks_active``: counts;
- ``control/not_applied_id``: the id of the last kick the trainer acknowledged without applying
  it, because it cannot carry out its kind (a gradient transform on a ZeRO engine); -1 before
  any. The kick policy then gives the kick back and never chooses that kind for the trial again;
- ``control/grad_transforms``: 0 from a trainer that cannot transform gradients at all (the
  DeepSpeed engine: ZeRO reduces and partitions them inside ``backward``), so the kick policy
  never picks Grokfast, gradient noise or ⊥Grad for it in the first place.

- ``control/refused``: commands the trainer refused (``CommandGate``) since its worker started.

Authentication. A live channel is shared by whoever can reach the cluster, so every command
travels signed: ``SweepKey.sign`` wraps it as ``{"sweep_id", "trial_id", "command",
"signature"}``, the signature an HMAC-SHA256 under the sweep's secret over ``canonical(...)`` of
the sweep id, the trial id, the command id and the rest of the command. The driver makes one key
per sweep (``SweepKey.generate``) and the trainables get it with their config; ``CommandGate``,
on the trainer's side, admits a command only if it is signed with that key, addressed to its own
trial and newer than every command it admitted or acknowledged, and turns anything else into a
``Refusal`` (counted, never applied).

How commands travel (a Ray actor, or a restart under a new config) is the adapters' business:
``grokschedule.adapters.control_channel`` and ``grokschedule.adapters.restart``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from grokschedule.core.contract import (
    ACKED_ID,
    APPLIED_STEP,
    CONTROL_PREFIX,
    KICKS_ACTIVE,
    NOT_APPLIED_ID,
    ROLLBACKS,
)
from grokschedule.core.kicks import (
    BATCH_SIZE,
    LORA_RANK,
    LR_MULTIPLY,
    SGD_SWITCH,
    WEIGHT_DECAY,
    Kick,
)

KICK = "kick"
ROLLBACK = "rollback"
COMMAND_TYPES = (KICK, ROLLBACK)
_KEYS = {KICK: {"id", "type", "kick"}, ROLLBACK: {"id", "type"}}
REFUSED = f"{CONTROL_PREFIX}refused"


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
    not_applied_id: int = -1

    def metrics(self, kicks_active: int) -> dict[str, int]:
        """The acknowledgement keys (module docstring) every report of a polling trainer
        carries; their presence is how the scheduler knows the trainable polls."""
        return {
            ACKED_ID: self.acked_id,
            APPLIED_STEP: self.applied_step,
            ROLLBACKS: self.rollbacks,
            KICKS_ACTIVE: kicks_active,
            NOT_APPLIED_ID: self.not_applied_id,
        }


ENVELOPE_KEYS = frozenset({"sweep_id", "trial_id", "command", "signature"})
MIN_SECRET_BYTES = 16


def canonical(sweep_id: str, trial_id: str, command: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: sweep id, trial id, command id and the rest of the command
    (``Command.to_dict()`` form), as sorted compact JSON, so both ends encode the same command
    identically. ``ValueError``/``TypeError`` for what JSON cannot hold (NaN, objects)."""
    payload = {key: value for key, value in command.items() if key != "id"}
    document = {
        "sweep_id": sweep_id,
        "trial_id": trial_id,
        "id": command.get("id"),
        "payload": payload,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


@dataclass(frozen=True, repr=False)
class SweepKey:
    """One sweep's identity and signing secret: made once on the driver (``generate``), given to
    the sender of commands and, with the trial config, to every trainable of the sweep.

    ``repr`` and ``str`` never show the secret, so a config logged or printed as text (Tune's
    ``params.json``, a console table) does not give it away; pickles do carry it, as they must to
    reach the workers.
    """

    sweep_id: str
    secret: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.sweep_id, str) or not self.sweep_id:
            raise ValueError(f"sweep_id must be a non-empty str, got {self.sweep_id!r}")
        if not isinstance(self.secret, bytes) or len(self.secret) < MIN_SECRET_BYTES:
            raise ValueError(f"secret must be at least {MIN_SECRET_BYTES} random bytes")

    @classmethod
    def generate(cls, sweep_id: str | None = None) -> SweepKey:
        """A fresh key: 32 bytes from ``secrets``, and a random sweep id unless given."""
        return cls(sweep_id or secrets.token_hex(6), secrets.token_bytes(32))

    def __repr__(self) -> str:
        return f"SweepKey(sweep_id={self.sweep_id!r}, secret=<hidden>)"

    __str__ = __repr__

    def signature(self, sweep_id: str, trial_id: str, command: Mapping[str, Any]) -> str:
        """Hex HMAC-SHA256 of ``canonical(sweep_id, trial_id, command)`` under this secret."""
        message = canonical(sweep_id, trial_id, command)
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def sign(self, trial_id: str, command: Command) -> dict[str, Any]:
        """The envelope that carries ``command`` to ``trial_id`` (module docstring)."""
        data = command.to_dict()
        return {
            "sweep_id": self.sweep_id,
            "trial_id": trial_id,
            "command": data,
            "signature": self.signature(self.sweep_id, trial_id, data),
        }


# Why a command was refused.
MALFORMED, OTHER_SWEEP, UNKNOWN_TRIAL = "malformed", "from another sweep", "unknown trial"
BAD_SIGNATURE, REPLAYED = "bad signature", "replayed"


@dataclass(frozen=True)
class Refusal:
    """A command ``CommandGate`` did not admit: why, and the ids the envelope claimed."""

    reason: str
    detail: str
    sweep_id: object = None
    trial_id: object = None
    command_id: object = None

    def describe(self) -> str:
        return (
            f"{self.reason} ({self.detail}; claimed sweep {self.sweep_id!r}, trial "
            f"{self.trial_id!r}, command id {self.command_id!r})"
        )


class CommandGate:
    """The trainer's side of authentication: ``admit`` turns an envelope into a ``Command`` only
    if it is signed with this sweep's key, addressed to this trial, and its id is above every id
    admitted or acknowledged so far (``acked_id``: the trainer's, restored from a checkpoint);
    otherwise it counts and returns a ``Refusal`` and the command must not be applied."""

    def __init__(self, key: SweepKey, trial_id: str, acked_id: int = -1) -> None:
        if not isinstance(key, SweepKey):
            raise ValueError(f"key must be a SweepKey, got {type(key).__name__}")
        if not isinstance(trial_id, str) or not trial_id:
            raise ValueError(f"trial_id must be a non-empty str, got {trial_id!r}")
        self.key, self.trial_id = key, trial_id
        self.last_id = acked_id
        self.refused = 0

    def acknowledged(self, acked_id: int) -> None:
        """The trainer has applied ``acked_id`` (e.g. restored from a checkpoint): never again."""
        self.last_id = max(self.last_id, acked_id)

    def admit(self, envelope: object) -> Command | Refusal:
        verdict = self._check(envelope)
        if isinstance(verdict, Refusal):
            self.refused += 1
        else:
            self.last_id = verdict.id
        return verdict

    def metrics(self) -> dict[str, int]:
        """``control/refused``, for every report of a polling trainer."""
        return {REFUSED: self.refused}

    def _check(self, envelope: object) -> Command | Refusal:
        if not isinstance(envelope, Mapping) or set(envelope) != ENVELOPE_KEYS:
            shape = sorted(envelope) if isinstance(envelope, Mapping) else type(envelope).__name__
            return Refusal(
                MALFORMED, f"an envelope has exactly {sorted(ENVELOPE_KEYS)}, got {shape}"
            )
        sweep_id, trial_id = envelope["sweep_id"], envelope["trial_id"]
        data, signature = envelope["command"], envelope["signature"]
        command_id = data.get("id") if isinstance(data, Mapping) else None

        def refuse(reason: str, detail: str) -> Refusal:
            return Refusal(reason, detail, sweep_id, trial_id, command_id)

        if not isinstance(data, Mapping) or not isinstance(signature, str):
            return refuse(MALFORMED, "the command must be a dict and the signature a str")
        if sweep_id != self.key.sweep_id:
            return refuse(OTHER_SWEEP, f"this trial belongs to sweep {self.key.sweep_id!r}")
        if trial_id != self.trial_id:
            return refuse(UNKNOWN_TRIAL, f"this is trial {self.trial_id!r}")
        try:
            expected = self.key.signature(sweep_id, trial_id, data)
        except (TypeError, ValueError) as error:
            return refuse(MALFORMED, f"not a JSON command: {error}")
        if not hmac.compare_digest(expected.encode(), signature.encode(errors="replace")):
            return refuse(BAD_SIGNATURE, "not signed with this sweep's key")
        try:
            command = Command.from_dict(data)
        except ValueError as error:
            return refuse(MALFORMED, str(error))
        if command.id <= self.last_id:
            last = self.last_id
            return refuse(
                REPLAYED, f"id {command.id} is not after {last}, the last admitted or acked"
            )
        return command


RESTART_KINDS = (LR_MULTIPLY, WEIGHT_DECAY, BATCH_SIZE, SGD_SWITCH, LORA_RANK)
LORA_RANK_KEY = "lm_lora_rank"  # the LM task's adapter rank in a trial's config


def config_change(kick: Kick, config: Mapping[str, Any]) -> dict[str, Any]:
    """The config keys that carry ``kick`` out in a trainable restarted under
    ``{**config, **change}``, for a trainable that reads the usual names: ``lr``,
    ``weight_decay``, ``batch_size``, ``optimizer``, ``momentum`` and ``lm_lora_rank``.

    A ``lora_rank`` kick raises ``lm_lora_rank``; the DeepSpeed trainer resumes a checkpoint of
    the smaller rank by growing its adapter (the function stays the same). It is permanent, and
    a rollback by restart cannot shrink the adapter of the latest checkpoint back.

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

    if kick.kind == LORA_RANK:
        rank = config.get(LORA_RANK_KEY)
        if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
            raise ValueError(
                f"a lora_rank kick needs a model with a LoRA adapter: the trial's config has "
                f"{LORA_RANK_KEY}={rank!r}, not an int > 0"
            )
        return {LORA_RANK_KEY: kick.rank_after(rank)}
    if kick.kind == LR_MULTIPLY:
        return {"lr": current("lr") * params["factor"]}
    if kick.kind == WEIGHT_DECAY:
        return {"weight_decay": current("weight_decay") * params["factor"]}
    change: dict[str, Any] = {"batch_size": int(current("batch_size")) * int(params["factor"])}
    if params["scale_lr"]:
        change["lr"] = current("lr") * kick.lr_factor(0)
    return change
