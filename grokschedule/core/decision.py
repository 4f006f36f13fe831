"""What the policy decides for a trial: the kind of decision, its cause, its reason in words and
the numbers behind it, and the command a KICK or ROLLBACK sends to the trainer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from grokschedule.core.commands import Command
from grokschedule.core.phases import Phase


class DecisionKind(str, Enum):
    CONTINUE = "CONTINUE"
    EXTEND = "EXTEND"
    STOP = "STOP"
    KICK = "KICK"
    ROLLBACK = "ROLLBACK"


class Cause(str, Enum):
    """Which rule made a decision: what a verdict says, and what a reader filters on, without
    parsing the reason. A decision's kind says what happens; its cause says why."""

    GROKKED = "grokked"  # the target reached its threshold
    DIVERGED = "diverged"  # non-finite or exploding training loss
    NEVER_GROK = "never-grok"  # a plateau judged hopeless (patience or P(grok))
    BUDGET = "budget"  # max_t (or the extension after it) is used up
    EXTENDED = "extended"  # past max_t, paid on because the run looks about to grok
    KICK = "kick"  # a quiet or behind-schedule plateau gets an intervention
    ROLLBACK = "rollback"  # an intervention made training worse
    KEPT = "kept"  # patience ran out, but P(grok) or the probe-set signals keep the run
    CONTINUE = "continue"  # nothing to act on yet: the phase says where the run is

    @classmethod
    def of(cls, decision: Mapping[str, Any]) -> Cause:
        """The cause of a ``Decision.to_dict()`` record. Records written before decisions
        carried a cause (older journals and MLflow runs) have it read off their reason."""
        if "cause" in decision:
            return cls(decision["cause"])
        reason = str(decision.get("reason", ""))
        return next(
            (c for prefix, c in _REASON_PREFIXES if reason.startswith(prefix)), cls.CONTINUE
        )


# How each cause's reason began before the cause was recorded; read by ``Cause.of`` only.
_REASON_PREFIXES = (
    ("grokked at step", Cause.GROKKED),
    ("diverged:", Cause.DIVERGED),
    ("never-grok:", Cause.NEVER_GROK),
    ("budget:", Cause.BUDGET),
    ("past max_t", Cause.EXTENDED),
    ("kick ", Cause.KICK),
    ("rollback:", Cause.ROLLBACK),
    ("kept past patience", Cause.KEPT),
)


@dataclass(frozen=True)
class Decision:
    """What to do with a trial now, why, and the signal values behind it."""

    kind: DecisionKind
    cause: Cause
    reason: str
    step: float
    phase: Phase
    score: float
    signals: dict[str, float] = field(default_factory=dict)
    command: Command | None = None  # for KICK / ROLLBACK: what the trainer must do

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, as journals and ``grok/decisions.json`` store it."""
        return {
            "kind": self.kind.value,
            "cause": self.cause.value,
            "reason": self.reason,
            "step": self.step,
            "phase": self.phase.value,
            "score": self.score,
            "signals": dict(self.signals),
            "command": None if self.command is None else self.command.to_dict(),
        }
