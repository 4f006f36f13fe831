"""A trial's decision timeline as a readable table, what each kick did, its verdict's tags and
the sweep's totals.

Works on decision dicts (``Decision.to_dict()``, as stored in ``grok/decisions.json``) rather than
on ``Decision`` objects, so the same code reads a live sweep, a local spool and an MLflow run
logged by an older version. Kinds are compared as strings for the same reason.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from grokschedule.core.decision import Cause
from grokschedule.core.summary import Verdict
from grokschedule.tracking import names

Decisions = Sequence[Mapping[str, Any]]


def verdict_tags(verdict: Verdict) -> dict[str, str]:
    """A trial run's verdict tags (``grokschedule.core.summary.judge`` decides the verdict)."""
    tags = {
        names.CATEGORY: verdict.category,
        names.OUTCOME: verdict.outcome,
        names.FINAL_PHASE: verdict.final_phase.value,
        names.STEPS_USED: f"{verdict.steps_used:.0f}",
        names.EXTENDED_STEPS: f"{verdict.extended_steps:.0f}",
        names.KICKS: str(verdict.kicks),
        names.ROLLBACKS: str(verdict.rollbacks),
    }
    if verdict.grok_step is not None:
        tags[names.GROK_STEP] = f"{verdict.grok_step:.0f}"
    if verdict.applied_kicks:
        tags[names.KICKS_APPLIED] = "; ".join(verdict.applied_kicks)
    return tags


def describe_kick(decision: Mapping[str, Any]) -> str:
    """``lr_multiply factor=3 for 300 steps`` from a KICK decision's command."""
    kick = (decision.get("command") or {}).get("kick")
    if not kick:
        return ""
    params = " ".join(f"{k}={v:g}" for k, v in sorted(kick.get("params", {}).items()))
    duration = kick.get("duration_steps")
    span = f" for {duration} steps" if duration else " for the rest of the run"
    return f"{kick['kind']} {params}".strip() + span


@dataclass(frozen=True)
class KickEffect:
    step: float
    kick: str
    effect: str


def kick_effects(decisions: Decisions) -> list[KickEffect]:
    """What followed each kick, up to the next one: a rollback, a transition, or nothing."""
    effects = []
    for i, decision in enumerate(decisions):
        if decision["kind"] != "KICK":
            continue
        last = decisions[-1]
        effect = "no transition evidence yet"
        if last is not decision and last["kind"] == "STOP":
            cause = Cause.of(last).value
            effect = f"no transition evidence before the stop at step {last['step']:.0f} ({cause})"
        for later in decisions[i + 1 :]:
            if later["kind"] == "KICK":
                effect = f"no transition before the next kick at step {later['step']:.0f}"
                break
            if later["kind"] == "ROLLBACK":
                reason = later["reason"].removeprefix("rollback: ")
                effect = f"rolled back at step {later['step']:.0f}: {reason}"
                break
            if later["phase"] in ("transition", "grokked"):
                effect = f"{later['phase']} at step {later['step']:.0f}"
                break
        effects.append(KickEffect(decision["step"], describe_kick(decision), effect))
    return effects


TIMELINE_COLUMNS = ("step", "decision", "phase", "reason", "signals", "kick", "rollback")


def timeline_rows(decisions: Decisions) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for d in decisions:
        signals = ", ".join(
            f"{k} {v:.3g}" for k, v in sorted((d.get("signals") or {}).items()) if v
        )
        rollback = d["reason"].removeprefix("rollback: ") if d["kind"] == "ROLLBACK" else ""
        rows.append(
            (
                f"{d['step']:.0f}",
                d["kind"],
                d["phase"],
                d["reason"],
                signals,
                describe_kick(d),
                rollback,
            )
        )
    return rows


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td { font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #ddd; }
.grokked { color: #1b7a2e; } .stopped { color: #b3261e; } .failed { color: #7b1fa2; }
"""


def html_page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{HTML_STYLE}</style></head><body>{body}</body></html>"
    )


def timeline_markdown(title: str, verdict: Verdict, decisions: Decisions) -> str:
    parts = [f"# {title}", "", f"**{verdict.outcome}**", ""]
    parts.append(markdown_table(TIMELINE_COLUMNS, timeline_rows(decisions)))
    effects = kick_effects(decisions)
    if effects:
        parts += ["", "## Kicks", ""]
        parts.append(markdown_table(("step", "kick", "effect"), _effect_rows(effects)))
    return "\n".join(parts) + "\n"


def timeline_html(title: str, verdict: Verdict, decisions: Decisions) -> str:
    body = (
        f"<h2>{html.escape(title)}</h2>"
        f"<p class='{verdict.category}'><b>{html.escape(verdict.outcome)}</b></p>"
        + html_table(TIMELINE_COLUMNS, timeline_rows(decisions))
    )
    effects = kick_effects(decisions)
    if effects:
        body += "<h3>Kicks</h3>" + html_table(("step", "kick", "effect"), _effect_rows(effects))
    return html_page(title, body)


def _effect_rows(effects: Sequence[KickEffect]) -> list[tuple[str, str, str]]:
    return [(f"{e.step:.0f}", e.kick, e.effect) for e in effects]


def sweep_totals(verdicts: Sequence[Mapping[str, str]], max_t: float) -> dict[str, float]:
    """Counts and compute of a sweep from its trials' verdict tags (``verdict_tags``); a trial
    without a verdict yet counts as running."""

    def count(category: str) -> int:
        return sum(v.get(names.CATEGORY, "running") == category for v in verdicts)

    used = sum(float(v.get(names.STEPS_USED, 0)) for v in verdicts)
    fifo = max_t * len(verdicts)
    return {
        "trials": len(verdicts),
        "grokked": count("grokked"),
        "stopped": count("stopped"),
        "failed": count("failed"),
        "running": count("running"),
        "extended": sum(float(v.get(names.EXTENDED_STEPS, 0)) > 0 for v in verdicts),
        "kicks": sum(int(v.get(names.KICKS, 0)) for v in verdicts),
        "rollbacks": sum(int(v.get(names.ROLLBACKS, 0)) for v in verdicts),
        "steps_used": used,
        "steps_fifo": fifo,
        "compute_share": used / fifo if fifo else 0.0,
    }


def describe_totals(totals: Mapping[str, float]) -> str:
    """``12 trials: 6 grokked, 5 stopped, ...; 29,000 steps vs 36,000 FIFO to max_t (81%)``."""
    counts = [
        f"{totals[k]:.0f} {k}" for k in ("grokked", "stopped", "failed", "running") if totals[k]
    ]
    extra = [f"{totals[k]:.0f} {k}" for k in ("extended", "kicks", "rollbacks") if totals[k]]
    head = f"{totals['trials']:.0f} trials: " + (", ".join(counts) or "none finished")
    if extra:
        head += f" ({', '.join(extra)})"
    return (
        f"{head}; {totals['steps_used']:,.0f} steps used vs {totals['steps_fifo']:,.0f} "
        f"FIFO to max_t ({totals['compute_share']:.0%})"
    )
