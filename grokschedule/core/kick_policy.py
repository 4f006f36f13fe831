"""When to kick a run stuck on its plateau, which kick, and when to roll a kick back.

Pure Python + numpy, like the rest of the decision core. A trial gets at most ``max_kicks``
kicks, each once its plateau has been quiet for ``kick_at`` × its patience, with ``cooldown``
steps between kicks. Which kind is chosen by Thompson sampling over the whole sweep: each kind
keeps a Beta(1 + helped, 1 + failed) posterior, where *helped* means transition evidence (or
grokking) appeared after the kick took effect. A kind the sweep has not judged yet goes first, in
the order of ``KickConfig.kicks`` (list the one you trust most first): the usual first round of a
bandit, which with no data to sample from would otherwise pick at random. A kick that makes
training worse than before by ``rollback_margin`` and does not recover within
``rollback_window`` steps — or that diverges — is rolled back and marked harmful for that trial.
A train loss on its way back down (fallen to 1/``rollback_recovery`` of its worst since the
window began) starts the window again: a kick can set off an Adam slingshot, a spike of the
loss that is back within a few hundred steps and is no harm, while a loss back at chance, or a
worse fit that stays, does not come down and is rolled back when the window ends.

The trainer acknowledges commands in its metrics (``control/acked_id``,
``control/applied_step``), so the policy knows the step each kick took effect. The same
``control/*`` mapping may carry ``control/weight_decay``, the trial's current weight decay (the
scheduler fills it from the trial's config when the trainer does not report it): a weight-decay
kick multiplies it, so a trial at weight decay 0 never gets one, nor one whose weight decay the
kick would take above ``KickConfig.max_weight_decay`` (the raise is for runs with too little).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from grokschedule.core.contract import ACKED_ID, APPLIED_STEP, CONTROL_WEIGHT_DECAY
from grokschedule.core.kicks import GROKFAST, LR_MULTIPLY, ORTHO_GRAD, WEIGHT_DECAY, Kick

DEFAULT_KICKS: tuple[Kick, ...] = (
    Kick(GROKFAST, {"alpha": 0.98, "lamb": 2.0}),
    Kick(LR_MULTIPLY, {"factor": 3.0}, duration_steps=300),
    Kick(WEIGHT_DECAY, {"factor": 3.0}, duration_steps=600),
    Kick(ORTHO_GRAD),
)


@dataclass(frozen=True)
class KickConfig:
    """Intervention settings; ``kicks`` are templates, one per allowed kind."""

    kicks: tuple[Kick, ...] = DEFAULT_KICKS
    max_kicks: int = 2
    kick_at: float = 0.5
    cooldown: float = 300
    rollback_margin: float = 0.1
    rollback_window: float = 200
    rollback_recovery: float = 2.0
    seed: int = 0
    max_weight_decay: float | None = None  # no weight-decay kick beyond it (None: no limit)

    def __post_init__(self) -> None:
        if not self.kicks:
            raise ValueError("kicks must name at least one kick")
        kinds = [k.kind for k in self.kicks]
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"kicks must hold one template per kind, got {kinds}")
        if self.max_kicks < 1:
            raise ValueError(f"max_kicks must be >= 1, got {self.max_kicks}")
        if not 0 < self.kick_at < 1:
            raise ValueError(f"kick_at must be in (0, 1) (share of patience), got {self.kick_at}")
        if self.max_weight_decay is not None and not self.max_weight_decay > 0:
            raise ValueError(f"max_weight_decay must be > 0 or None, got {self.max_weight_decay}")
        for name in ("cooldown", "rollback_margin", "rollback_window"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.rollback_recovery > 1:
            raise ValueError(f"rollback_recovery must be > 1, got {self.rollback_recovery}")

    @classmethod
    def from_user(cls, value: bool | Sequence[str] | Mapping[str, Any] | None) -> KickConfig | None:
        """``True`` → defaults; a list of kinds → those default templates; a mapping → fields
        (``kicks`` may hold kind names, ``Kick``s or ``Kick.to_dict()`` dicts)."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, Mapping):
            options = dict(value)
            if "kicks" in options:
                options["kicks"] = _templates(options["kicks"])
            return cls(**options)
        return cls(kicks=_templates(value))


def _templates(items: Sequence[str | Kick | Mapping[str, Any]]) -> tuple[Kick, ...]:
    defaults = {k.kind: k for k in DEFAULT_KICKS}
    kicks = []
    for item in items:
        if isinstance(item, Kick):
            kicks.append(item)
        elif isinstance(item, str):
            if item not in defaults:
                raise ValueError(
                    f"kick kind {item!r} has no default template; allowed by name: "
                    f"{sorted(defaults)} (pass a Kick for others)"
                )
            kicks.append(defaults[item])
        else:
            kicks.append(Kick.from_dict(item))
    return tuple(kicks)


@dataclass
class KickStats:
    helped: int = 0
    failed: int = 0


@dataclass
class TrialKicks:
    """One trial's intervention history."""

    used: int = 0
    next_id: int = 0
    pending: dict[int, Kick] = field(default_factory=dict)  # posted, not acknowledged
    applied: list[tuple[int, Kick, float]] = field(default_factory=list)  # (id, kick, step)
    baseline: tuple[float, float] | None = None  # (train_loss, train_acc) before the last kick
    judged: set[int] = field(default_factory=set)
    harmful: set[str] = field(default_factory=set)
    rollbacks: int = 0
    rollback_pending: int | None = None
    worse_since: float | None = None  # the step the window for a recovery began
    worse_peak: float = math.nan  # the highest train loss since then
    last_kick_step: float | None = None
    weight_decay: float | None = None  # the trial's current value, when known
    unavailable: set[str] = field(default_factory=set)  # kinds its trainable cannot carry out


class KickPolicy:
    """Sweep-wide kick statistics plus per-trial histories."""

    def __init__(self, config: KickConfig) -> None:
        self.config = config
        self.stats = {k.kind: KickStats() for k in config.kicks}
        self.trials: dict[str, TrialKicks] = {}
        self._rng = np.random.default_rng(config.seed)

    def trial(self, trial_id: str) -> TrialKicks:
        return self.trials.setdefault(trial_id, TrialKicks())

    # -- acknowledgements ------------------------------------------------------------------
    def absorb(
        self, trial_id: str, control: Mapping[str, float], train: tuple[float, float]
    ) -> None:
        """Read the trainer's acknowledgements; remember the pre-kick train metrics."""
        t = self.trial(trial_id)
        if CONTROL_WEIGHT_DECAY in control:
            t.weight_decay = float(control[CONTROL_WEIGHT_DECAY])
        acked = int(control.get(ACKED_ID, -1))
        applied_step = float(control.get(APPLIED_STEP, math.nan))
        for command_id in sorted(i for i in t.pending if i <= acked):
            kick = t.pending.pop(command_id)
            t.applied.append((command_id, kick, applied_step))
            t.last_kick_step = applied_step
            t.worse_since = None
        if t.rollback_pending is not None and acked >= t.rollback_pending:
            t.rollback_pending = None
        if not t.pending and t.rollback_pending is None and not t.applied:
            t.baseline = train

    def awaiting(self, trial_id: str) -> bool:
        t = self.trial(trial_id)
        return bool(t.pending) or t.rollback_pending is not None

    # -- decisions --------------------------------------------------------------------------
    def choose(
        self, trial_id: str, step: float, train: tuple[float, float]
    ) -> tuple[int, Kick] | None:
        """A kick to post now, or None when the trial has used its kicks or is cooling down."""
        t = self.trial(trial_id)
        if t.used >= self.config.max_kicks or self.awaiting(trial_id):
            return None
        if t.last_kick_step is not None and step - t.last_kick_step < self.config.cooldown:
            return None
        skip = t.harmful | t.unavailable | {kick.kind for _, kick, _ in t.applied}
        if t.weight_decay is not None and not self._weight_decay_kick_helps(t.weight_decay):
            skip.add(WEIGHT_DECAY)
        candidates = [k for k in self.config.kicks if k.kind not in skip]
        if not candidates:
            return None
        untried = [k for k in candidates if self.stats[k.kind] == KickStats()]
        if untried:
            kick = untried[0]
        else:
            draws = [
                self._rng.beta(1 + self.stats[k.kind].helped, 1 + self.stats[k.kind].failed)
                for k in candidates
            ]
            kick = candidates[int(np.argmax(draws))]
        command_id = t.next_id
        t.next_id += 1
        t.used += 1
        t.pending[command_id] = kick
        t.baseline = train
        return command_id, kick

    def _weight_decay_kick_helps(self, weight_decay: float) -> bool:
        """False at weight decay 0 (a multiple of 0 changes nothing) or when the kick would take
        it above ``max_weight_decay``."""
        template = next((k for k in self.config.kicks if k.kind == WEIGHT_DECAY), None)
        if weight_decay == 0 or template is None:
            return weight_decay != 0
        cap = self.config.max_weight_decay
        return cap is None or weight_decay * template.wd_factor() <= cap * (1 + 1e-9)

    def not_applied(self, trial_id: str, command_id: int) -> Kick:
        """The trial's trainable cannot carry out posted kick ``command_id`` (e.g. a gradient
        transform for a trainable that only takes config changes): it does not count against
        ``max_kicks``, teaches the sweep nothing, and its kind is not chosen again for the trial."""
        t = self.trial(trial_id)
        kick = t.pending.pop(command_id)
        t.used -= 1
        t.unavailable.add(kick.kind)
        return kick

    def harm(self, trial_id: str, step: float, train: tuple[float, float], diverged: bool) -> str:
        """Why the last applied kick should be rolled back now, or ``""``."""
        t = self.trial(trial_id)
        if not t.applied or t.baseline is None or t.rollback_pending is not None:
            return ""
        command_id, kick, applied_step = t.applied[-1]
        if kick.kind in t.harmful:
            return ""
        if diverged:  # even after it was credited: a kick still in force may blow up later
            return f"{kick.kind} kick at step {applied_step:.0f} diverged"
        if command_id in t.judged:
            return ""
        loss0, acc0 = t.baseline
        loss, acc = train
        margin = self.config.rollback_margin
        worse = acc < acc0 - margin or loss > loss0 * (1 + margin) + margin
        if not worse:
            t.worse_since = None
            return ""
        if t.worse_since is None or loss <= t.worse_peak / self.config.rollback_recovery:
            t.worse_since, t.worse_peak = step, loss  # a new setback, or one coming back down
        t.worse_peak = max(t.worse_peak, loss)
        if step - t.worse_since < self.config.rollback_window:
            return ""
        return (
            f"{kick.kind} kick at step {applied_step:.0f} made training worse and it did not "
            f"recover in {self.config.rollback_window:.0f} steps: train_acc {acc0:.3f}→{acc:.3f},"
            f" train_loss {loss0:.3g}→{loss:.3g} (margin {margin:g})"
        )

    def order_rollback(self, trial_id: str) -> int:
        t = self.trial(trial_id)
        command_id, kick, _ = t.applied[-1]
        t.harmful.add(kick.kind)
        t.judged.add(command_id)
        t.rollbacks += 1
        self.stats[kick.kind].failed += 1
        rollback_id = t.next_id
        t.next_id += 1
        t.rollback_pending = rollback_id
        t.worse_since = None
        return rollback_id

    def credit(self, trial_id: str, evidence_step: float | None, grokked: bool) -> None:
        """Credit applied kicks followed by fresh evidence (or grokking) as having helped."""
        t = self.trial(trial_id)
        for command_id, kick, applied_step in t.applied:
            if command_id in t.judged:
                continue
            if grokked or (evidence_step is not None and evidence_step > applied_step):
                t.judged.add(command_id)
                self.stats[kick.kind].helped += 1

    def fail_unjudged(self, trial_id: str) -> None:
        """A trial stopped as never-grok: its kicks did not help."""
        t = self.trial(trial_id)
        for command_id, kick, _ in t.applied:
            if command_id not in t.judged:
                t.judged.add(command_id)
                self.stats[kick.kind].failed += 1

    def describe_stats(self) -> str:
        return ", ".join(
            f"{kind} {s.helped}/{s.helped + s.failed}" for kind, s in self.stats.items()
        )
