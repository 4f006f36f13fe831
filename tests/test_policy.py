import pytest
from conftest import observations

from grokschedule.phases import Observation, Phase
from grokschedule.policy import DecisionKind, GrokPolicy, PolicyConfig


def _replay(policy: GrokPolicy, trial_id: str, curve) -> list:
    decisions = []
    for obs in observations(curve):
        decisions.append(policy.observe(trial_id, obs))
        if decisions[-1].kind is DecisionKind.STOP:
            break
    return decisions


def test_grokker_is_kept_through_its_plateau_and_stopped_once_grokked(recorded_curves) -> None:
    decisions = _replay(
        GrokPolicy(PolicyConfig(max_t=3000)), "g", recorded_curves["grokker_p47_wd1"]
    )
    assert all(d.kind is DecisionKind.CONTINUE for d in decisions[:-1])
    final = decisions[-1]
    assert final.kind is DecisionKind.STOP and final.phase is Phase.GROKKED
    assert final.reason.startswith("grokked at step 1650")


def test_memorizer_is_stopped_as_never_grok_with_its_evidence(recorded_curves) -> None:
    policy = GrokPolicy(PolicyConfig(max_t=3000))
    decisions = _replay(policy, "m", recorded_curves["memorizer_p47_wd0"])
    final = decisions[-1]
    assert final.kind is DecisionKind.STOP
    assert final.phase is Phase.STALLED
    assert final.reason.startswith("never-grok: no transition evidence")
    assert final.step < 1500  # well before max_t: that is the compute saved
    assert final.signals["val_loss_change"] > 0  # the numbers behind the reason travel with it
    assert [d.phase for d in policy.log["m"]][-1] is Phase.STALLED


def test_patience_is_relative_to_memorization_time() -> None:
    policy = GrokPolicy(PolicyConfig(max_t=10_000, min_patience=0, patience_factor=3))
    tracker = policy.tracker("t")
    tracker.memorized_step = 400
    assert policy.patience(tracker) == 1200


def test_run_transitioning_at_max_t_is_extended_then_stopped_at_the_cap(recorded_curves) -> None:
    # The slow grokker turns at ~1,600 steps and crosses 0.95 at 4,450: with max_t=3,000 and a
    # patience that covers its quiet stretch, it must be extended past max_t rather than cut.
    config = PolicyConfig(max_t=3000, max_extension=2000, patience_factor=20)
    decisions = _replay(GrokPolicy(config), "s", recorded_curves["slow_grokker_p59_f04"])
    kinds = {d.kind for d in decisions if d.step > 3000}
    assert DecisionKind.EXTEND in kinds
    assert decisions[-1].phase is Phase.GROKKED and decisions[-1].step == 4450

    short = PolicyConfig(max_t=3000, max_extension=500, patience_factor=20)
    decisions = _replay(GrokPolicy(short), "s", recorded_curves["slow_grokker_p59_f04"])
    assert decisions[-1].kind is DecisionKind.STOP
    assert decisions[-1].reason.startswith("budget: reached extension")
    assert decisions[-1].step == 3500


def test_divergence_stops_with_its_reason() -> None:
    policy = GrokPolicy(PolicyConfig(max_t=100))
    policy.observe("d", Observation(step=1, target=0.0, train_loss=1.0))
    decision = policy.observe("d", Observation(step=2, target=0.0, train_loss=float("inf")))
    assert decision.kind is DecisionKind.STOP
    assert decision.reason == "diverged: train_loss is inf"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mode": "maximize"}, "mode"),
        ({"max_t": 0}, "max_t"),
        ({"max_t": -5}, "max_t"),
        ({"grok_threshold": 1.5}, "grok_threshold"),
        ({"grok_threshold": float("nan")}, "grok_threshold"),
        ({"metric": "val_loss", "mode": "min", "grok_threshold": -1.0}, "grok_threshold"),
        ({"patience_factor": 0}, "patience_factor"),
        ({"max_extension": -1}, "max_extension"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, field) -> None:
    with pytest.raises(ValueError, match=field):
        PolicyConfig(**kwargs)
