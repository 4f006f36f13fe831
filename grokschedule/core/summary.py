"""The end-of-sweep account: who grokked and when, who was stopped and why, what it cost."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from grokschedule.core.phases import Phase, PhaseDetector
from grokschedule.core.policy import Decision, DecisionKind


@dataclass(frozen=True)
class TrialOutcome:
    trial_id: str
    phase: Phase
    steps_used: float
    grok_step: float | None
    verdict: str
    error: str | None = None
    kicks: int = 0
    rollbacks: int = 0

    @classmethod
    def from_tracker(
        cls,
        trial_id: str,
        tracker: PhaseDetector,
        last: Decision | None,
        log: list[Decision],
        steps_used: float,
        error: str | None = None,
    ) -> TrialOutcome:
        if error:
            verdict = f"error: {error}"
        elif last is None:
            verdict = "no result yet"
        else:
            verdict = f"{last.kind.value}: {last.reason}"
        return cls(
            trial_id,
            tracker.phase,
            steps_used,
            tracker.grokked_step,
            verdict,
            error,
            kicks=sum(d.kind is DecisionKind.KICK for d in log),
            rollbacks=sum(d.kind is DecisionKind.ROLLBACK for d in log),
        )


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
            f"  {names.get(t.trial_id, t.trial_id)} at step {t.steps_used:.0f}: {t.verdict}"
            for t in self.stopped
        ]
        others = [t for t in self.trials if t not in self.grokked and t not in self.stopped]
        if others:
            lines.append(f"Other ({len(others)}):")
            lines += [
                f"  {names.get(t.trial_id, t.trial_id)} ({t.phase.value}, {t.steps_used:.0f} "
                f"steps): {t.verdict}"
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
