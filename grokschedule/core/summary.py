"""The end-of-sweep account: who grokked and when, who was stopped and why, what it cost; and
each trial's verdict, which MLflow shows in the same words (``judge``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from grokschedule.core.decision import Decision, DecisionKind
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
    )


@dataclass(frozen=True)
class TrialOutcome:
    """A trial in the sweep's account: its verdict and its latest decision in words."""

    trial_id: str
    verdict: Verdict
    last: str  # "KIND: reason" of the latest decision, "error: ..." or "no result yet"
    error: str | None = None

    @classmethod
    def of(
        cls,
        trial_id: str,
        log: Sequence[Decision],
        last: Decision | None,
        steps_used: float,
        max_t: float,
        error: str | None = None,
    ) -> TrialOutcome:
        """``log`` and ``last``: the policy's ``decision_log`` and ``last_decision``."""
        if error is not None:
            text = f"error: {error}"
        elif last is None:
            text = "no result yet"
        else:
            text = f"{last.kind.value}: {last.reason}"
        return cls(trial_id, judge(log, steps_used, max_t, error), text, error)

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

    def render(self, names: dict[str, str] | None = None) -> str:
        """A plain-text report for the console."""
        names = names or {}
        lines = [f"Grokked ({len(self.grokked)}/{len(self.trials)}):"]
        lines += [
            f"  {names.get(t.trial_id, t.trial_id)}: {self.metric} threshold at step "
            f"{t.grok_step:.0f} (ran {t.steps_used:.0f} steps)"
            for t in self.grokked
        ]
        lines.append(f"Stopped ({len(self.stopped)}):")
        lines += [
            f"  {names.get(t.trial_id, t.trial_id)} at step {t.steps_used:.0f}: {t.last}"
            for t in self.stopped
        ]
        others = [t for t in self.trials if t not in self.grokked and t not in self.stopped]
        if others:
            lines.append(f"Other ({len(others)}):")
            lines += [
                f"  {names.get(t.trial_id, t.trial_id)} ({t.phase.value}, {t.steps_used:.0f} "
                f"steps): {t.last}"
                for t in others
            ]
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
