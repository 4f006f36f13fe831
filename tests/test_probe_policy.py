"""The policy reads a language model's probe-set signals (``grok/probe/<set>/*``) when they are
reported: a never-grok stop is withheld while they show progress, their values travel in the
decision, and a trial without them is decided exactly as before."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
from test_policy import _flat, _plateau_policy

from grokschedule.core.contract import (
    Observation,
    parse_probe_metric,
    probe_metric,
)
from grokschedule.core.decision import Cause, DecisionKind
from grokschedule.core.policy import GrokPolicy, PolicyConfig
from grokschedule.core.predictor import Prediction
from grokschedule.core.probe_watch import ProbeWatch

STEPS = range(100, 3000, 100)
EM = probe_metric("val", "exact_match")
RULES = {"max_t": 10_000, "min_patience": 0, "patience_factor": 2, "predictor": False}


def with_probes(step: float, **stats: float) -> Observation:
    """The flat plateau of ``_flat`` (patience runs out at 1,200) plus probe-set stats."""
    obs = _flat(step)
    extras = {
        probe_metric(name.split("__")[0], name.split("__")[1]): v for name, v in stats.items()
    }
    return Observation(**{**obs.__dict__, "extras": extras})


def rising(step: float, until: float = 10_000) -> float:
    return min(step, until) / 10_000


def decide(policy: GrokPolicy, stream) -> list:
    return [policy.observe("t", obs) for obs in stream]


def test_rising_harder_set_exact_match_withholds_the_stop_until_it_flattens() -> None:
    def stream(step: float) -> Observation:
        return with_probes(step, probe__exact_match=rising(step, until=1600), probe__loss=2.0)

    decisions = decide(GrokPolicy(PolicyConfig(**RULES)), (stream(s) for s in STEPS))
    kept = decisions[11]  # step 1,200: where the plain rule stops
    assert kept.step == 1200 and kept.kind is DecisionKind.CONTINUE and kept.cause is Cause.KEPT
    assert kept.reason.startswith("kept past patience: held-out probe signals show progress")
    assert "probe exact-match rising" in kept.reason and "withheld never-grok" in kept.reason
    assert kept.signals["probe/probe/exact_match"] == 0.12
    assert kept.signals["probe/probe/exact_match_change"] > 0.02
    stop = next(d for d in decisions if d.kind is DecisionKind.STOP)
    # flat from 1,600: once the window's trend is no longer rising, patience stops it
    assert stop.cause is Cause.NEVER_GROK and 1600 < stop.step <= 2600
    assert "probe sets probe: EM 0.16" in stop.reason  # the values are in the evidence


def test_confidence_on_correct_answers_counts_only_while_the_probe_loss_falls() -> None:
    def unsure_then_right(step: float) -> Observation:
        return with_probes(
            step, val__conf_correct=0.3 + rising(step), val__loss=3.0 - rising(step) * 10
        )

    def confident_and_wrong(step: float) -> Observation:  # the memorizer's signature
        return with_probes(
            step,
            val__conf_correct=0.3 + rising(step),
            val__conf_wrong=0.5 + rising(step),
            val__loss=3.0,
        )

    kept = decide(GrokPolicy(PolicyConfig(**RULES)), (unsure_then_right(s) for s in STEPS))
    assert DecisionKind.STOP not in {d.kind for d in kept}
    assert "val confidence on correct answers rising" in kept[11].reason
    assert "while its loss falls" in kept[11].reason
    stopped = decide(GrokPolicy(PolicyConfig(**RULES)), (confident_and_wrong(s) for s in STEPS))
    stop = next(d for d in stopped if d.kind is DecisionKind.STOP)
    assert stop.step == 1200 and stop.signals["probe/val/conf_wrong"] == 0.62


def test_a_low_p_grok_stop_is_withheld_too() -> None:
    policy = _plateau_policy(0.01, None, max_t=10_000)
    stream = (with_probes(s, val__exact_match=rising(s)) for s in range(100, 2000, 100))
    decisions = decide(policy, stream)
    assert DecisionKind.STOP not in {d.kind for d in decisions}
    held = decisions[7]  # step 800: where P(grok) 0.01 stops it without probe signals
    assert held.cause is Cause.KEPT and "withheld never-grok: P(grok) 0.01" in held.reason


def test_without_probe_signals_the_decisions_do_not_change() -> None:
    """Flat probe signals change only the wording; none at all change nothing."""
    plain = decide(GrokPolicy(PolicyConfig(**RULES)), (_flat(s) for s in STEPS))
    flat = decide(
        GrokPolicy(PolicyConfig(**RULES)),
        (with_probes(s, val__exact_match=0.1, val__loss=2.0) for s in STEPS),
    )
    assert [(d.kind, d.cause, d.step) for d in flat] == [(d.kind, d.cause, d.step) for d in plain]
    assert all("probe" not in d.reason and not any("probe" in k for k in d.signals) for d in plain)
    assert plain[11].kind is DecisionKind.STOP and plain[11].step == 1200


def test_probe_metric_names_round_trip_and_bad_names_are_refused() -> None:
    assert probe_metric("val", "exact_match") == "grok/probe/val/exact_match"
    assert parse_probe_metric("grok/probe/val/ppl") == ("val", "ppl")
    assert parse_probe_metric("grok/probe_ms") is None
    assert parse_probe_metric("grok/probe/val/unknown") is None
    with pytest.raises(ValueError, match="probe stat must be one of"):
        probe_metric("val", "accuracy")
    with pytest.raises(ValueError, match="probe set name"):
        probe_metric("a/b", "loss")
    with pytest.raises(ValueError, match="min_match_change must be > 0"):
        ProbeWatch(min_match_change=0.0)


def test_with_a_loss_target_the_predictor_reads_held_out_exact_match_as_val_acc() -> None:
    """A target that is not an accuracy (``val_loss``) leaves the predictor without a validation
    accuracy; the held-out probe set's exact-match takes its place: the accuracy features are
    read from it (gain since memorization), and no ``missing:val_acc`` flag is raised."""
    config = PolicyConfig(metric="val_loss", mode="min", grok_threshold=0.1, max_t=20_000)

    def observe(held_out: Callable[[float], float] | None) -> Prediction:
        policy = GrokPolicy(config)
        for step in range(100, 4100, 100):
            obs = _flat(step)  # memorized at 400, the target (val_loss) flat at 9
            extras = {} if held_out is None else {EM: held_out(step)}
            policy.observe("t", replace(obs, target=9.0, extras=extras))
        prediction = policy.trial("t").prediction
        assert prediction is not None
        return prediction

    blind = observe(None)
    assert "missing:val_acc" in blind.missing and "val_acc_gain" not in blind.evidence
    flat = observe(lambda step: 0.05)
    assert "missing:val_acc" not in flat.missing and flat.evidence["val_acc_gain"] == 0.0

    def rising_em(step: float) -> float:
        return 0.05 + 0.3 * max(step - 400, 0) / 3600

    risen = observe(rising_em)
    assert risen.step is not None  # the gain is read from memorization (400) to that step
    assert risen.evidence["val_acc_gain"] == pytest.approx(rising_em(risen.step) - 0.05)
