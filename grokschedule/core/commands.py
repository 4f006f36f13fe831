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
- ``control/rollbacks``, ``control/kicks_active``: counts.

How commands travel (a Ray actor, or a restart under a new config) is the adapters' business:
``grokschedule.adapters.control_channel`` and ``grokschedule.adapters.restart``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from grokschedule.core.contract import ACKED_ID, APPLIED_STEP, KICKS_ACTIVE, ROLLBACKS
from grokschedule.core.kicks import BATCH_SIZE, LR_MULTIPLY, SGD_SWITCH, WEIGHT_DECAY, Kick

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
            ACKED_ID: self.acked_id,
            APPLIED_STEP: self.applied_step,
            ROLLBACKS: self.rollbacks,
            KICKS_ACTIVE: kicks_active,
        }


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
