"""When to kick a run stuck on its plateau, which kick, and when to roll a kick back.

Pure Python + numpy, like the rest of the decision core. A trial gets at most ``max_kicks``
kicks, each once its plateau has been quiet for ``kick_at`` × its patience, with ``cooldown``
steps between kicks. Which kind is chosen by Thompson sampling over the whole sweep: each kind
keeps a Beta(1 + helped, 1 + failed) posterior, where *helped* means transition evidence (or
grokking) appeared after the kick took effect, and *failed* a rollback, a never-grok stop, or no
evidence within ``verdict_after`` steps. A kind the sweep has not judged yet goes first: the usual
first round of a bandit, which with no data to sample from would otherwise pick at random.

Which kind goes first depends on what is known of the trial (``FirstKick`` rules, measured in
the kick table, ``grokschedule bench kicks``): its weight decay, its weight-norm trend (the log
change of ``weight_norm`` over the last ``norm_window`` steps) and its plateau age (steps quiet);
the first rule that matches (and names a kind the trial may get) puts its kind first, the others
follow in the order of ``KickConfig.kicks``, as for every later kick of the trial. Once kinds
have been judged, that kind gets ``rule_prior`` pseudo-successes in the Thompson draw.

A sweep learns which kind works only from kicks it has judged, so the first kicks are staggered:
until the sweep's first verdict, only a probe cohort of ``probe_trials`` trials (the first to be
ready) is kicked, each with a different untried kind where there is one; the others wait, up to
``probe_wait`` steps past the point they were ready, so none waits for ever on a slow verdict.

A kick that makes training worse than before by ``rollback_margin`` and does not recover within
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
Likewise ``control/lora_rank``, the rank of the trial's LoRA adapter (reported by the DeepSpeed
trainer, else read from ``lm_lora_rank`` in its config), and ``control/lora_rank_limit``, the
largest rank its adapted layers allow: a ``lora_rank`` kick goes only to a trial with an adapter,
and only while the grown rank stays within ``KickConfig.max_lora_rank`` and that limit. A trial
with no adapter (every MLP or modular trial) never gets one, so its kicks are what they would be
without the kind.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from grokschedule.core.contract import (
    ACKED_ID,
    APPLIED_STEP,
    CONTROL_LORA_RANK,
    CONTROL_LORA_RANK_LIMIT,
    CONTROL_WEIGHT_DECAY,
    GRAD_TRANSFORMS,
    NOT_APPLIED_ID,
)
from grokschedule.core.kicks import GRAD_TRANSFORMS as GRAD_TRANSFORM_KINDS
from grokschedule.core.kicks import (
    GROKFAST,
    KINDS,
    LORA_RANK,
    LR_CYCLE,
    LR_MULTIPLY,
    ORTHO_GRAD,
    WEIGHT_DECAY,
    Kick,
)

# Chosen from the kick table (``grokschedule bench kicks --preset cpu``, BENCHMARKS.md): the
# kinds that lost no run in the weight-decay band they are for. An lr cycle (×10 over 400 steps)
# sped up the strong-decay runs most (1.7× median) and lost none anywhere, lr × 3 next (1.5×;
# also the lr cycle's stand-in for trainables that take only config changes); ⊥Grad for 250
# steps is the weak-decay runs' first kick (1.75×, and 1 of 6 runs at weight decay 0 grokked
# only with it; at strong decay it lost a run, so it is not first there), and a raise helps only
# weak decay (``max_weight_decay`` 1 keeps it there: raised past 1 it made runs forget and lost
# some). Grokfast sped up none and slowed strong-decay runs (0.8×), so it is no longer a default
# (``"grokfast"`` still names its template). The LoRA rank × 4 (8 → 32) is for trials with an
# adapter only (module docstring); the kick table's MLP runs have none, so it is not in it.
DEFAULT_KICKS: tuple[Kick, ...] = (
    Kick(LR_CYCLE, {"peak": 10.0}, duration_steps=400),
    Kick(LR_MULTIPLY, {"factor": 3.0}, duration_steps=300),
    Kick(ORTHO_GRAD, duration_steps=250),
    Kick(WEIGHT_DECAY, {"factor": 3.0}, duration_steps=600),
    Kick(LORA_RANK, {"factor": 4.0}),
)
# Templates by name for ``KickConfig.from_user``: the defaults and Grokfast-EMA.
TEMPLATES: dict[str, Kick] = {k.kind: k for k in DEFAULT_KICKS} | {
    GROKFAST: Kick(GROKFAST, {"alpha": 0.98, "lamb": 2.0})
}


NORM_TRENDS = ("any", "rising", "flat_or_falling")


@dataclass(frozen=True)
class FirstKick:
    """A rule for a trial's first kick: ``kind`` when the trial's weight decay is in
    [``min_weight_decay``, ``max_weight_decay``] (an unknown one matches only the full range),
    its norm trend is ``norm`` ("rising": up by more than ``KickConfig.norm_rise`` over the
    norm window; "flat_or_falling": not; "any") and its plateau has been quiet ≥ ``min_age``."""

    kind: str
    min_weight_decay: float = 0.0
    max_weight_decay: float = math.inf
    norm: str = "any"
    min_age: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"FirstKick.kind must be one of {KINDS}, got {self.kind!r}")
        if self.norm not in NORM_TRENDS:
            raise ValueError(f"FirstKick.norm must be one of {NORM_TRENDS}, got {self.norm!r}")
        if not 0 <= self.min_weight_decay <= self.max_weight_decay:
            raise ValueError(
                "FirstKick needs 0 <= min_weight_decay <= max_weight_decay, got "
                f"{self.min_weight_decay!r}, {self.max_weight_decay!r}"
            )
        if not self.min_age >= 0:
            raise ValueError(f"FirstKick.min_age must be >= 0, got {self.min_age!r}")

    def matches(
        self, weight_decay: float | None, trend: float | None, age: float, rise: float
    ) -> bool:
        if weight_decay is None:
            wd_ok = self.min_weight_decay == 0 and self.max_weight_decay == math.inf
        else:
            wd_ok = self.min_weight_decay <= weight_decay <= self.max_weight_decay
        if self.norm == "any":
            norm_ok = True
        elif trend is None:
            norm_ok = False
        else:
            norm_ok = (trend > rise) == (self.norm == "rising")
        return wd_ok and norm_ok and age >= self.min_age


# The table's per-band winners: weak decay (< 0.5) ⊥Grad, strong decay the lr cycle; with the
# weight decay unknown, a rising weight norm (weak decay's sign in the table) picks ⊥Grad.
# Neither winner changed with the plateau's age (kicked at 1× or 4× the memorization step), so
# no rule uses ``min_age``. A trial with a LoRA adapter that can grow gets the rank first: the one
# kick that leaves the function as it is (nothing to forget) and the LLM fine-tuner's remedy for
# a rank too small. Not measured in the kick table (MLPs only); a trial without an adapter skips
# the kind, and with it this rule, so the table's picks are unchanged.
DEFAULT_FIRST: tuple[FirstKick, ...] = (
    FirstKick(LORA_RANK),
    FirstKick(ORTHO_GRAD, max_weight_decay=0.5),
    FirstKick(LR_CYCLE, min_weight_decay=0.5),
    FirstKick(ORTHO_GRAD, norm="rising"),
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
    max_weight_decay: float | None = 1.0  # no weight-decay kick beyond it (None: no limit)
    max_lora_rank: int = 64  # no lora_rank kick to a rank above it
    first: tuple[FirstKick, ...] = DEFAULT_FIRST  # which kind first, by what is known of a trial
    norm_window: float = 200  # steps the weight-norm trend is measured over
    norm_rise: float = 0.01  # a log-norm rise above this over the window is "rising"
    rule_prior: float = 1.0  # pseudo-successes a matching rule's kind gets in the draw
    probe_trials: int = 2  # trials kicked before the sweep's first verdict (0: no staggering)
    probe_wait: float = 600  # steps a ready trial outside the cohort waits for that verdict
    verdict_after: float | None = 1000  # a kick with no evidence this long after has failed

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
        rank = self.max_lora_rank
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"max_lora_rank must be an int >= 1, got {rank!r}")
        for name in ("cooldown", "rollback_margin", "rollback_window"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.rollback_recovery > 1:
            raise ValueError(f"rollback_recovery must be > 1, got {self.rollback_recovery}")
        if isinstance(self.probe_trials, bool) or not isinstance(self.probe_trials, int):
            raise ValueError(f"probe_trials must be an int >= 0, got {self.probe_trials!r}")
        if self.probe_trials < 0:
            raise ValueError(f"probe_trials must be an int >= 0, got {self.probe_trials!r}")
        for name in ("norm_window", "probe_wait", "rule_prior", "norm_rise"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.verdict_after is not None and not self.verdict_after > 0:
            raise ValueError(f"verdict_after must be > 0 or None, got {self.verdict_after!r}")
        if not all(isinstance(rule, FirstKick) for rule in self.first):
            raise ValueError(f"first must hold FirstKick rules, got {self.first!r}")

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
            if "first" in options:
                options["first"] = tuple(
                    rule if isinstance(rule, FirstKick) else FirstKick(**rule)
                    for rule in options["first"]
                )
            return cls(**options)
        return cls(kicks=_templates(value))


def _templates(items: Sequence[str | Kick | Mapping[str, Any]]) -> tuple[Kick, ...]:
    defaults = TEMPLATES
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
    lora_rank: int | None = None  # its LoRA adapter's rank; None: no adapter (or not known)
    lora_rank_limit: int | None = None  # the largest rank its adapted layers allow, when known
    unavailable: set[str] = field(default_factory=set)  # kinds its trainable cannot carry out
    norms: list[tuple[float, float]] = field(default_factory=list)  # (step, weight_norm)
    ready_since: float | None = None  # first step it was due a kick while the probe ran
    why: str = ""  # why the last kick's kind was chosen


class KickPolicy:
    """Sweep-wide kick statistics plus per-trial histories."""

    def __init__(self, config: KickConfig) -> None:
        self.config = config
        self.stats = {k.kind: KickStats() for k in config.kicks}
        self.trials: dict[str, TrialKicks] = {}
        self.cohort: list[str] = []  # the probe cohort, in the order it was filled
        self._rng = np.random.default_rng(config.seed)

    def trial(self, trial_id: str) -> TrialKicks:
        return self.trials.setdefault(trial_id, TrialKicks())

    # -- acknowledgements ------------------------------------------------------------------
    def absorb(
        self,
        trial_id: str,
        control: Mapping[str, float],
        train: tuple[float, float],
        step: float | None = None,
        weight_norm: float | None = None,
    ) -> None:
        """Read the trainer's acknowledgements; remember the pre-kick train metrics and the
        weight norm at ``step`` (for the norm trend)."""
        t = self.trial(trial_id)
        if step is not None and weight_norm is not None and weight_norm > 0:
            t.norms.append((step, weight_norm))
            while len(t.norms) > 2 and t.norms[1][0] <= step - self.config.norm_window:
                t.norms.pop(0)
        if CONTROL_WEIGHT_DECAY in control:
            t.weight_decay = float(control[CONTROL_WEIGHT_DECAY])
        if CONTROL_LORA_RANK in control:
            t.lora_rank = int(control[CONTROL_LORA_RANK])
        if CONTROL_LORA_RANK_LIMIT in control:
            t.lora_rank_limit = int(control[CONTROL_LORA_RANK_LIMIT])
        if control.get(GRAD_TRANSFORMS) == 0:  # e.g. a ZeRO engine: none of them can work
            t.unavailable.update(GRAD_TRANSFORM_KINDS)
        not_applied = int(control.get(NOT_APPLIED_ID, -1))
        if not_applied in t.pending:  # acknowledged, but its kind is beyond the trainer
            self.not_applied(trial_id, not_applied)
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

    def awaiting_verdict(self, trial_id: str) -> tuple[Kick, float] | None:
        """The trial's last applied kick and the step it took effect, while its verdict is still
        open: no evidence after it yet, not ``verdict_after`` steps old, not rolled back."""
        t = self.trial(trial_id)
        if not t.applied:
            return None
        command_id, kick, applied_step = t.applied[-1]
        return None if command_id in t.judged else (kick, applied_step)

    # -- decisions --------------------------------------------------------------------------
    def norm_trend(self, trial_id: str) -> float | None:
        """log(|w| now / |w| about ``norm_window`` steps ago); None until that long is seen."""
        norms = self.trial(trial_id).norms
        if len(norms) < 2 or norms[-1][0] - norms[0][0] < self.config.norm_window / 2:
            return None
        return math.log(norms[-1][1] / norms[0][1])

    def judged(self) -> int:
        """Kicks the sweep has judged (helped or failed)."""
        return sum(s.helped + s.failed for s in self.stats.values())

    def choose(
        self, trial_id: str, step: float, train: tuple[float, float], plateau_age: float = 0.0
    ) -> tuple[int, Kick] | None:
        """A kick to post now, or None when the trial has used its kicks, is cooling down, or
        waits for the probe cohort's first verdict. ``plateau_age``: steps its plateau has been
        quiet."""
        t = self.trial(trial_id)
        if t.used >= self.config.max_kicks or self.awaiting(trial_id):
            return None
        if t.last_kick_step is not None and step - t.last_kick_step < self.config.cooldown:
            return None
        skip = t.harmful | t.unavailable | {kick.kind for _, kick, _ in t.applied}
        if t.weight_decay is not None and not self._weight_decay_kick_helps(t.weight_decay):
            skip.add(WEIGHT_DECAY)
        if not self._lora_rank_can_grow(t):
            skip.add(LORA_RANK)
        candidates = [k for k in self.config.kicks if k.kind not in skip]
        if not candidates or self._waits_for_probe(trial_id, step):
            return None
        trend = self.norm_trend(trial_id)
        ruled = [
            rule.kind
            for rule in self.config.first
            if t.used == 0  # the rules pick a trial's first kick; later ones follow the list
            and rule.kind not in skip
            and rule.matches(t.weight_decay, trend, plateau_age, self.config.norm_rise)
        ][:1]
        ranked = sorted(
            candidates,
            key=lambda k: ruled.index(k.kind) if k.kind in ruled else len(ruled),
        )
        untried = [k for k in ranked if self.stats[k.kind] == KickStats()]
        if untried:
            # The probe cohort tries different kinds at once; any other trial takes its own.
            probing = trial_id in self.cohort and not self.judged()
            in_flight = self._in_flight() if probing else set()
            spread = [k for k in untried if k.kind not in in_flight] or untried
            kick = spread[0]
            why = "untried"
            if kick.kind in ruled:
                why += f", first for {self._context(t.weight_decay, trend, plateau_age)}"
                if kick.kind == LORA_RANK:
                    why += f", LoRA rank {t.lora_rank} → {kick.rank_after(t.lora_rank or 0)}"
            if kick is not untried[0]:
                why += f", spread from {untried[0].kind} (in flight)"
        else:
            draws = [
                self._rng.beta(
                    1
                    + self.stats[k.kind].helped
                    + (self.config.rule_prior if k.kind in ruled else 0.0),
                    1 + self.stats[k.kind].failed,
                )
                for k in ranked
            ]
            kick = ranked[int(np.argmax(draws))]
            why = "Thompson draw"
        command_id = t.next_id
        t.next_id += 1
        t.used += 1
        t.pending[command_id] = kick
        t.baseline = train
        t.why = why
        return command_id, kick

    @staticmethod
    def _context(weight_decay: float | None, trend: float | None, age: float) -> str:
        wd = "wd ?" if weight_decay is None else f"wd {weight_decay:.3g}"
        norm = "|w| trend ?" if trend is None else f"|w| trend {trend:+.3f}"
        return f"{wd}, {norm}, quiet {age:.0f} steps"

    def _waits_for_probe(self, trial_id: str, step: float) -> bool:
        """Before the sweep's first verdict only the probe cohort is kicked; another ready
        trial waits, for at most ``probe_wait`` steps."""
        size = self.config.probe_trials
        if size == 0 or trial_id in self.cohort or self.judged():
            return False
        if len(self.cohort) < size:
            self.cohort.append(trial_id)
            return False
        t = self.trial(trial_id)
        if t.ready_since is None:
            t.ready_since = step
        return step - t.ready_since < self.config.probe_wait

    def _in_flight(self) -> set[str]:
        """Kinds posted or applied somewhere in the sweep and not judged yet."""
        kinds = set()
        for t in self.trials.values():
            kinds |= {kick.kind for kick in t.pending.values()}
            kinds |= {kick.kind for i, kick, _ in t.applied if i not in t.judged}
        return kinds

    def _weight_decay_kick_helps(self, weight_decay: float) -> bool:
        """False at weight decay 0 (a multiple of 0 changes nothing) or when the kick would take
        it above ``max_weight_decay``."""
        template = next((k for k in self.config.kicks if k.kind == WEIGHT_DECAY), None)
        if weight_decay == 0 or template is None:
            return weight_decay != 0
        cap = self.config.max_weight_decay
        return cap is None or weight_decay * template.wd_factor() <= cap * (1 + 1e-9)

    def _lora_rank_can_grow(self, t: TrialKicks) -> bool:
        """A trial with a LoRA adapter whose grown rank stays within ``max_lora_rank`` and the
        rank its layers allow."""
        template = next((k for k in self.config.kicks if k.kind == LORA_RANK), None)
        if t.lora_rank is None or t.lora_rank < 1 or template is None:
            return False
        grown = template.rank_after(t.lora_rank)
        limit = t.lora_rank_limit
        return grown <= self.config.max_lora_rank and (limit is None or grown <= limit)

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

    def credit(
        self, trial_id: str, evidence_step: float | None, grokked: bool, step: float | None = None
    ) -> None:
        """Credit applied kicks followed by fresh evidence (or grokking) as having helped; at
        ``step``, one with none ``verdict_after`` steps after it took effect has failed."""
        t = self.trial(trial_id)
        after = self.config.verdict_after
        for command_id, kick, applied_step in t.applied:
            if command_id in t.judged:
                continue
            if grokked or (evidence_step is not None and evidence_step > applied_step):
                t.judged.add(command_id)
                self.stats[kick.kind].helped += 1
            elif after is not None and step is not None and step - applied_step >= after:
                t.judged.add(command_id)
                self.stats[kick.kind].failed += 1

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
