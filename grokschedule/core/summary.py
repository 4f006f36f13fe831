"""The end-of-sweep account: who grokked and when, who was stopped and why, what it cost; and
each trial's verdict, which MLflow shows in the same words (``judge``).

A trial is named by the configuration it started with (a kick by restart rewrites the trial's
config: a weight-decay kick turns 0.3 into 0.8999999999999999, which is not what the user ran),
and its kicks are listed next to it; numbers are rounded to 3 significant digits for people.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from grokschedule.core.decision import Decision, DecisionKind
from grokschedule.core.labels import format_value, short_labels
from grokschedule.core.phases import Phase


@dataclass(frozen=True)
class Verdict:
    """How a trial ended, in the words and numbers a reviewer looks for."""

    category: str  # grokked | stopped | failed | ended
    outcome: str  # "grokked at step 1650", "stopped at step 1150: never-grok", ...
    final_phase: Phase
    steps_used: float
    grok_step: float | None
    extended_steps: float
    kicks: int
    rollbacks: int
    applied_kicks: tuple[str, ...] = ()  # "step 300: lr_multiply factor=3 for 300 steps", ...


# The keys a trial is named by, in this order, when its config has them; others follow.
NAME_KEYS = (
    "op",
    "p",
    "train_fraction",
    "lm_op",
    "lm_train_fraction",
    "lm_lora_rank",
    "weight_decay",
    "lr",
)


def describe_config(
    config: Mapping[str, Any], keys: Sequence[str] | None = None, sep: str = ","
) -> str:
    """``op=mul,p=61,train_fraction=0.35,weight_decay=0.3,lr=0.003``: ``keys`` (default
    ``NAME_KEYS``; all of ``config`` for ``()``) that ``config`` has, values rounded for people."""
    wanted = NAME_KEYS if keys is None else (keys or tuple(config))
    return sep.join(f"{key}={format_value(config[key])}" for key in wanted if key in config)


def describe_kick_decision(decision: Decision) -> str:
    """``step 300: lr_multiply factor=3 for 300 steps`` for a KICK decision (``""`` otherwise)."""
    command = decision.command
    if decision.kind is not DecisionKind.KICK or command is None or command.kick is None:
        return ""
    kick = command.kick
    params = " ".join(f"{k}={format_value(v)}" for k, v in sorted(kick.params.items()))
    span = (
        f" for {kick.duration_steps} steps" if kick.duration_steps else " for the rest of the run"
    )
    return f"step {decision.step:.0f}: {kick.kind} {params}".rstrip() + span


def applied_kicks(log: Sequence[Decision]) -> tuple[str, ...]:
    """Every kick of a decision log in words, each marked when a later ROLLBACK undid it."""
    described: list[str] = []
    for decision in log:
        if decision.kind is DecisionKind.ROLLBACK and described:
            described[-1] += " (rolled back)"
        text = describe_kick_decision(decision)
        if text:
            described.append(text)
    return tuple(described)


def judge(
    log: Sequence[Decision], steps_used: float, max_t: float, error: str | None = None
) -> Verdict:
    """The verdict of a trial from its decision log (``GrokPolicy.decision_log``): the one
    account the console summary and MLflow give."""
    kinds = [d.kind for d in log]
    extended = max(0.0, steps_used - max_t) if DecisionKind.EXTEND in kinds else 0.0
    grok_step = next((d.step for d in log if d.phase is Phase.GROKKED), None)
    last = log[-1] if log else None
    phase = last.phase if last else Phase.WARMUP
    after = f" (extended by {extended:,.0f} steps past max_t)" if extended else ""
    if error is not None:
        category, outcome = "failed", f"failed at step {steps_used:.0f}: {error}"
    elif grok_step is not None:
        category, outcome = "grokked", f"grokked at step {grok_step:.0f}{after}"
    elif last is not None and last.kind is DecisionKind.STOP:
        cause = last.cause.value
        category, outcome = "stopped", f"stopped at step {steps_used:.0f}: {cause}{after}"
    else:
        category, outcome = "ended", f"ended at step {steps_used:.0f} in {phase.value}{after}"
    return Verdict(
        category=category,
        outcome=outcome,
        final_phase=phase,
        steps_used=steps_used,
        grok_step=grok_step,
        extended_steps=extended,
        kicks=kinds.count(DecisionKind.KICK),
        rollbacks=kinds.count(DecisionKind.ROLLBACK),
        applied_kicks=applied_kicks(log),
    )


@dataclass(frozen=True)
class TrialOutcome:
    """A trial in the sweep's account: its verdict and its latest decision in words."""

    trial_id: str
    verdict: Verdict
    last: str  # "KIND: reason" of the latest decision, "error: ..." or "no result yet"
    error: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)  # as the trial started, before kicks

    @classmethod
    def of(
        cls,
        trial_id: str,
        log: Sequence[Decision],
        last: Decision | None,
        steps_used: float,
        max_t: float,
        error: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> TrialOutcome:
        """``log`` and ``last``: the policy's ``decision_log`` and ``last_decision``;
        ``config``: the trial's config as it started (kicks by restart rewrite it later)."""
        if error is not None:
            text = f"error: {error}"
        elif last is None:
            text = "no result yet"
        else:
            text = f"{last.kind.value}: {last.reason}"
        return cls(trial_id, judge(log, steps_used, max_t, error), text, error, dict(config or {}))

    @property
    def name(self) -> str:
        """``a1b2c_00003(op=mul,p=61,weight_decay=0.3)``: the id and the original config."""
        described = describe_config(self.config)
        return f"{self.trial_id}({described})" if described else self.trial_id

    @property
    def phase(self) -> Phase:
        return self.verdict.final_phase

    @property
    def steps_used(self) -> float:
        return self.verdict.steps_used

    @property
    def grok_step(self) -> float | None:
        return self.verdict.grok_step

    @property
    def kicks(self) -> int:
        return self.verdict.kicks

    @property
    def rollbacks(self) -> int:
        return self.verdict.rollbacks


@dataclass(frozen=True)
class SweepSummary:
    trials: list[TrialOutcome]
    max_t: float
    metric: str

    @property
    def steps_used(self) -> float:
        return sum(t.steps_used for t in self.trials)

    @property
    def steps_budget(self) -> float:
        """What running every trial to ``max_t`` would have cost."""
        return self.max_t * len(self.trials)

    def phase_counts(self) -> dict[str, int]:
        return dict(Counter(t.phase.value for t in self.trials))

    @property
    def grokked(self) -> list[TrialOutcome]:
        return [t for t in self.trials if t.phase is Phase.GROKKED]

    @property
    def stopped(self) -> list[TrialOutcome]:
        return [t for t in self.trials if t.phase in (Phase.STALLED, Phase.DIVERGED)]

    def names(self) -> dict[str, str]:
        """Per trial, ``a1b2c_00003(frac=0.2 rank=8 wd=1)``: its id and the parameters of its
        original config that vary across the sweep (``core.labels.short_labels``); a trial
        nothing tells apart (a single one, repeated samples) by its config (``name``)."""
        labels = short_labels({t.trial_id: t.config for t in self.trials})
        names = {}
        for t in self.trials:
            label = labels[t.trial_id].removesuffix(f" ({t.trial_id})")
            names[t.trial_id] = t.name if label == t.trial_id else f"{t.trial_id}({label})"
        return names

    def render(self, names: dict[str, str] | None = None) -> str:
        """A plain-text report for the console: each trial by ``names[trial_id]`` if given,
        else by what tells its original config from the others' (``names()``), its kicks
        listed under it."""
        names = names or self.names()

        def entry(t: TrialOutcome, text: str) -> list[str]:
            kicks = [f"    kick {k}" for k in t.verdict.applied_kicks]
            return [f"  {names.get(t.trial_id, t.name)}{text}", *kicks]

        lines = [f"Grokked ({len(self.grokked)}/{len(self.trials)}):"]
        for t in self.grokked:
            grokked = f"{self.metric} threshold at step {t.grok_step:.0f}"
            lines += entry(t, f": {grokked} (ran {t.steps_used:.0f} steps)")
        lines.append(f"Stopped ({len(self.stopped)}):")
        for t in self.stopped:
            lines += entry(t, f" at step {t.steps_used:.0f}: {t.last}")
        others = [t for t in self.trials if t not in self.grokked and t not in self.stopped]
        if others:
            lines.append(f"Other ({len(others)}):")
            for t in others:
                lines += entry(t, f" ({t.phase.value}, {t.steps_used:.0f} steps): {t.last}")
        kicked = [t for t in self.trials if t.kicks]
        if kicked:
            lines.append(
                f"Interventions: {sum(t.kicks for t in kicked)} kicks on {len(kicked)} trials, "
                f"{sum(t.rollbacks for t in kicked)} rolled back; "
                f"{sum(t.phase is Phase.GROKKED for t in kicked)} kicked trials grokked."
            )
        share = self.steps_used / self.steps_budget if self.steps_budget else 0.0
        lines.append(
            f"Compute: {self.steps_used:,.0f} steps used vs {self.steps_budget:,.0f} to run every "
            f"trial to max_t={self.max_t:,.0f} ({share:.0%})."
        )
        return "\n".join(lines)
