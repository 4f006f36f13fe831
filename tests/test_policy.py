"""GrokPolicy on recorded and synthetic curves: each rule, its cause and reason, the predictor's
wiring, the per-trial state and the validation of PolicyConfig."""

from dataclasses import replace

import pytest
from conftest import observations

from grokschedule.core.contract import Observation
from grokschedule.core.decision import Cause, Decision, DecisionKind
from grokschedule.core.phases import Phase
from grokschedule.core.policy import GrokPolicy, PolicyConfig


def _replay(policy: GrokPolicy, trial_id: str, curve) -> list:
    decisions = []
    for obs in observations(curve):
        decisions.append(policy.observe(trial_id, obs))
        if decisions[-1].kind is DecisionKind.STOP:
            break
    return decisions


def test_grokker_is_kept_through_its_plateau_and_stopped_once_grokked(recorded_curves) -> None:
    decisions = _replay(
        GrokPolicy(PolicyConfig(patience_factor=10.0, judge_after=2.0, max_t=3000)),
        "g",
        recorded_curves["grokker_p47_wd1"],
    )
    assert all(d.kind is DecisionKind.CONTINUE for d in decisions[:-1])
    final = decisions[-1]
    assert final.kind is DecisionKind.STOP and final.phase is Phase.GROKKED
    assert final.reason.startswith("grokked at step 1650")


@pytest.mark.parametrize("predictor", [True, False])
@pytest.mark.parametrize("name", ["memorizer_p47_wd0", "nogrok_p47_wd01"])
def test_memorizer_is_stopped_as_never_grok_with_its_evidence(
    recorded_curves, predictor, name
) -> None:
    policy = GrokPolicy(
        PolicyConfig(patience_factor=10.0, judge_after=2.0, max_t=3000, predictor=predictor)
    )
    decisions = _replay(policy, "m", recorded_curves[name])
    final = decisions[-1]
    assert final.kind is DecisionKind.STOP
    assert final.phase is Phase.STALLED
    assert final.reason.startswith("never-grok: ")
    assert final.step < 2000  # well before max_t: that is the compute saved
    assert "val_loss_change" in final.signals  # the numbers behind the reason travel with it
    assert [d.phase for d in policy.decision_log("m")][-1] is Phase.STALLED
    if predictor:
        assert 0.0 <= final.signals["p_grok"] < 0.5
        assert "P(grok)" in final.reason
    else:
        assert final.reason.startswith("never-grok: no transition evidence")
        assert "p_grok" not in final.signals


def test_slow_grokker_is_not_stopped_before_it_groks(recorded_curves) -> None:
    """slow_grokker_p59_f04 memorizes at 150 and groks at 4,450; its validation loss rises until
    ~1,650 and nothing predicts the turn before it (P(grok) ≈ 0.00–0.04). 0.1's patience
    (10× memorization) stopped it there as never-grok, which is why the default is 20×; the
    predictor's stop, judged on the top of its interval from 4× memorization, leaves it alone."""
    curve = recorded_curves["slow_grokker_p59_f04"]
    hand = _replay(
        GrokPolicy(PolicyConfig(max_t=5000, predictor=False, patience_factor=10.0)), "s", curve
    )
    assert hand[-1].kind is DecisionKind.STOP and hand[-1].reason.startswith("never-grok")
    assert hand[-1].step < 2000  # the false kill the 20× default fixes

    for predictor in (False, True):
        decisions = _replay(GrokPolicy(PolicyConfig(max_t=5000, predictor=predictor)), "s", curve)
        assert all(d.kind is not DecisionKind.STOP for d in decisions[:-1])
        assert decisions[-1].phase is Phase.GROKKED and decisions[-1].step == 4450


def test_prediction_signals_are_in_every_plateau_decision(recorded_curves) -> None:
    policy = GrokPolicy(PolicyConfig(patience_factor=10.0, judge_after=2.0, max_t=3000))
    decisions = _replay(policy, "g", recorded_curves["grokker_p47_wd1"])
    plateau = [d for d in decisions if d.phase in (Phase.PLATEAU, Phase.TRANSITION)]
    assert plateau
    for d in plateau:
        assert 0.0 <= d.signals["p_grok"] <= 1.0 and d.score == d.signals["p_grok"]
        assert "P(grok)" in d.reason
        assert ("eta_steps" in d.signals) == (d.signals["p_grok"] >= 0.5)


def test_policy_history_is_bounded_and_pickles_small(recorded_curves) -> None:
    import pickle

    policy = GrokPolicy(PolicyConfig(max_t=1e9, min_patience=1e9))
    sizes = []
    for n in range(1, 4001):
        obs = Observation(
            step=10 * n,
            target=0.01,
            train_loss=0.01,
            train_acc=1.0,
            val_loss=5.0,
            weight_norm=50.0 + (n % 7),
            extras={"grok/val_correct_prob": 0.02},
        )
        policy.observe("t", obs)
        if n in (400, 4000):
            sizes.append(len(pickle.dumps(policy)))
    assert len(policy.trial("t").history.rows) <= policy.predictor.capacity
    assert abs(sizes[1] - sizes[0]) < 1500, sizes


def test_patience_is_relative_to_memorization_time() -> None:
    policy = GrokPolicy(PolicyConfig(max_t=10_000, min_patience=0, patience_factor=3))
    detector = policy.add("t").detector
    detector.memorized_step = 400
    assert policy.patience(detector) == 1200


def test_run_transitioning_at_max_t_is_extended_then_stopped_at_the_cap(recorded_curves) -> None:
    # The slow grokker turns at ~1,600 steps and crosses 0.95 at 4,450: with max_t=3,000 and a
    # patience that covers its quiet stretch, it must be extended past max_t rather than cut.
    variants = [(False, 20.0), (True, 20.0)]
    for predictor, factor in variants:
        config = PolicyConfig(
            max_t=3000, max_extension=2000, patience_factor=factor, predictor=predictor
        )
        decisions = _replay(GrokPolicy(config), "s", recorded_curves["slow_grokker_p59_f04"])
        kinds = {d.kind for d in decisions if d.step > 3000}
        assert DecisionKind.EXTEND in kinds
        assert decisions[-1].phase is Phase.GROKKED and decisions[-1].step == 4450

    short = PolicyConfig(max_t=3000, max_extension=500, patience_factor=20)
    decisions = _replay(GrokPolicy(short), "s", recorded_curves["slow_grokker_p59_f04"])
    assert decisions[-1].kind is DecisionKind.STOP
    assert decisions[-1].reason.startswith("budget: reached the end of the extension")
    assert decisions[-1].step == 3500


def test_divergence_stops_with_its_reason() -> None:
    policy = GrokPolicy(PolicyConfig(patience_factor=10.0, judge_after=2.0, max_t=100))
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
        ({"stop_below": -0.1}, "stop_below"),
        ({"keep_above": 1.5}, "keep_above"),
        ({"stop_below": 0.6, "keep_above": 0.5}, "stop_below"),
        ({"judge_after": 0.5}, "judge_after"),
        ({"predictor": "/no/such/predictor.json"}, "predictor"),
        ({"predictor": 1.0}, "predictor"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, field) -> None:
    with pytest.raises(ValueError, match=field):
        PolicyConfig(**kwargs)


class _StubPredictor:
    """Says whatever the test wants, so the policy's wiring is tested apart from coefficients."""

    capacity = 32
    recommended_stop_below = 0.05

    def __init__(self, p_grok: float, eta: float | None) -> None:
        self.p_grok, self.eta = p_grok, eta

    def predict(self, history):
        from grokschedule.core.predictor import Prediction

        return Prediction(
            self.p_grok,
            self.eta,
            {"val_loss_slope": 0.1},
            {"val_loss_slope": -1.0},
            history.memorized_step,
            history.step,
        )


def _plateau_policy(p_grok: float, eta: float | None, **config) -> GrokPolicy:
    rules = {"patience_factor": 10.0, "judge_after": 2.0}  # the timings these tests assume
    policy = GrokPolicy(PolicyConfig(stop_below=0.05, **(rules | config)))
    policy.predictor = _StubPredictor(p_grok, eta)  # type: ignore[assignment]
    return policy


def _flat(step: float) -> Observation:
    """Memorized at step 400, then a flat plateau: no transition evidence at all."""
    return Observation(
        step=step,
        target=0.01,
        train_loss=1e-3,
        train_acc=1.0 if step >= 400 else 0.5,
        val_loss=9.0,
        weight_norm=50.0,
    )


def test_low_p_grok_stops_a_plateau_early_but_not_before_2x_memorization() -> None:
    policy = _plateau_policy(0.01, None, max_t=10_000)
    decisions = [policy.observe("t", _flat(step)) for step in range(100, 2000, 100)]
    stop = next(d for d in decisions if d.kind is DecisionKind.STOP)
    assert stop.step == 800  # 2× memorization at 400
    assert stop.reason.startswith("never-grok: P(grok) 0.01")
    assert "stop_below 0.05 at 2.0× memorization" in stop.reason
    assert stop.signals["p_grok"] == 0.01 and stop.phase is Phase.STALLED
    # With interventions a low P(grok) is kicked, not stopped outright.
    from grokschedule.core.kick_policy import KickConfig

    kicked = _plateau_policy(0.01, None, max_t=10_000, interventions=KickConfig())
    kinds = [kicked.observe("t", _flat(step)).kind for step in range(100, 1500, 100)]
    assert DecisionKind.STOP not in kinds


def test_high_p_grok_outlasts_patience_and_extends_when_its_eta_fits() -> None:
    config = {"max_t": 2000, "max_extension": 1000, "min_patience": 0, "patience_factor": 2}
    policy = _plateau_policy(0.9, 300.0, **config)
    decisions = {step: policy.observe("t", _flat(step)) for step in range(100, 3100, 100)}
    kept = decisions[1500]  # patience 2× memorization (400) ran out at 1,200
    assert kept.kind is DecisionKind.CONTINUE and kept.reason.startswith("kept past patience")
    assert "P(grok) 0.90, ETA 300 steps" in kept.reason and kept.signals["eta_steps"] == 300
    extended = decisions[2000]
    assert extended.kind is DecisionKind.EXTEND
    assert "predicted to grok by 2300" in extended.reason
    assert decisions[3000].kind is DecisionKind.STOP  # the extension cap still holds

    late = _plateau_policy(0.9, 5000.0, **config)
    final = [late.observe("t", _flat(step)) for step in range(100, 2100, 100)][-1]
    assert final.kind is DecisionKind.STOP and final.reason.startswith("budget: reached max_t")


def test_middling_p_grok_leaves_the_patience_rule_in_charge() -> None:
    policy = _plateau_policy(0.3, None, max_t=10_000, min_patience=0, patience_factor=2)
    decisions = [policy.observe("t", _flat(step)) for step in range(100, 2000, 100)]
    stop = next(d for d in decisions if d.kind is DecisionKind.STOP)
    assert stop.step == 1200 and stop.reason.startswith("never-grok: no transition evidence")
    assert "P(grok) 0.30" in stop.reason


def _all_decisions(policy: GrokPolicy, trial_id: str, stream) -> list:
    return [policy.observe(trial_id, obs) for obs in stream]


def test_every_decision_names_its_cause_and_old_records_read_it_off_the_reason(
    recorded_curves,
) -> None:
    from grokschedule.core.kick_policy import KickConfig

    decisions = []
    for config in (
        {},
        {"predictor": False},
        {"interventions": KickConfig(max_kicks=2, cooldown=0)},
        {"stop_on_grok": False, "max_extension": 100},
    ):
        for name, curve in recorded_curves.items():
            policy = GrokPolicy(
                PolicyConfig(patience_factor=10.0, judge_after=2.0, max_t=3000, **config)
            )
            decisions += _all_decisions(policy, name, observations(curve))
    kept = _plateau_policy(0.9, 300.0, max_t=2000, min_patience=0, patience_factor=2)
    decisions += _all_decisions(kept, "t", (_flat(step) for step in range(100, 3100, 100)))
    diverged = GrokPolicy(PolicyConfig(patience_factor=10.0, judge_after=2.0, max_t=100))
    decisions += [
        diverged.observe("d", Observation(step=1, target=0.0, train_loss=1.0)),
        diverged.observe("d", Observation(step=2, target=0.0, train_loss=float("inf"))),
    ]
    kicked = GrokPolicy(
        PolicyConfig(
            patience_factor=10.0,
            judge_after=2.0,
            max_t=3000,
            predictor=False,
            interventions=KickConfig(),
        )
    )
    plateau = dict(target=0.0, train_loss=0.01, train_acc=1.0, val_loss=5.0)
    decisions += _all_decisions(
        kicked, "r", (Observation(step=s, **plateau) for s in range(50, 1050, 50))
    )
    kick = next(d for d in decisions[-20:] if d.kind is DecisionKind.KICK)
    ack = {"control/acked_id": kick.command.id, "control/applied_step": kick.step}
    blown = Observation(step=1050, target=0.0, train_loss=float("nan"), control=ack)
    decisions.append(kicked.observe("r", blown))
    assert {d.cause for d in decisions} == set(Cause)
    stops = {Cause.GROKKED, Cause.NEVER_GROK, Cause.DIVERGED, Cause.BUDGET}
    expected = {
        DecisionKind.STOP: stops,
        DecisionKind.EXTEND: {Cause.EXTENDED},
        DecisionKind.KICK: {Cause.KICK},
        DecisionKind.ROLLBACK: {Cause.ROLLBACK},
    }
    for d in decisions:
        assert d.cause in expected.get(d.kind, {Cause.GROKKED, Cause.KEPT, Cause.CONTINUE})
        record = d.to_dict()
        assert Cause.of(record) is d.cause
        del record["cause"]  # as journals written before decisions carried one
        assert Cause.of(record) is d.cause, d.reason


def test_the_latest_decision_takes_a_note_in_the_log_too() -> None:
    from grokschedule.core.kick_policy import KickConfig

    policy = GrokPolicy(
        PolicyConfig(
            patience_factor=10.0,
            judge_after=2.0,
            max_t=3000,
            predictor=False,
            interventions=KickConfig(),
        )
    )
    for step in range(50, 3000, 50):
        obs = Observation(step=step, target=0.0, train_loss=0.01, train_acc=1.0, val_loss=5.0)
        kick = policy.observe("k", obs)
        if kick.kind is DecisionKind.KICK:
            break
    noted = policy.note("k", kick, "applied by restart")
    assert noted.reason == f"{kick.reason}; applied by restart"
    assert noted.command is kick.command and noted.cause is kick.cause
    assert policy.last_decision("k") is noted and policy.decision_log("k")[-1] is noted
    later = policy.observe("k", Observation(step=step + 50, target=0.0, train_loss=0.01))
    assert later.kind is DecisionKind.CONTINUE
    with pytest.raises(ValueError, match="latest decision"):
        policy.note("k", noted, "too late")


def test_trials_are_added_listed_and_forgotten() -> None:
    policy = GrokPolicy(PolicyConfig(patience_factor=10.0, judge_after=2.0, max_t=100))
    policy.add("failed-at-once")
    policy.observe("ran", Observation(step=1, target=0.0, train_loss=1.0))
    assert policy.trial_ids() == ["failed-at-once", "ran"]
    assert policy.last_decision("failed-at-once") is None
    assert policy.decision_log("failed-at-once") == [] == policy.decision_log("unknown")
    policy.forget("ran")
    assert policy.trial_ids() == ["failed-at-once"] and policy.last_decision("ran") is None
    with pytest.raises(KeyError, match="ran"):
        policy.trial("ran")


def test_policy_config_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        PolicyConfig("val_acc", "max")


def _falling_val_loss(step: float) -> Observation:
    """``_flat``'s plateau, but with the validation loss falling: fresh evidence every report."""
    return replace(_flat(step), val_loss=9.0 * 0.97 ** (step / 100))


def test_low_p_grok_vetoes_an_extension_unless_a_kick_touched_the_run() -> None:
    """At ``max_t`` a plateau showing fresh evidence is extended unless P(grok) says it is
    hopeless. Interventions do not lift that veto for a run no kick touched (none can reach it
    past ``max_t``); a kicked run's curve is not one the predictor was fitted on, so only the
    patience rule judges it."""
    from grokschedule.core.kick_policy import KickConfig

    def at_budget(max_t: float, **config) -> list[Decision]:
        policy = _plateau_policy(0.01, None, max_t=max_t, max_extension=1000, **config)
        steps = range(100, int(max_t) + 100, 100)
        return [policy.observe("t", _falling_val_loss(step)) for step in steps]

    plain = at_budget(800)[-1]  # judged at 2× memorization (400) = max_t
    assert plain.kind is DecisionKind.STOP and plain.cause is Cause.BUDGET
    assert plain.reason.startswith("budget: reached max_t 800 in plateau")
    unkicked = at_budget(800, interventions=KickConfig())
    assert DecisionKind.KICK not in {d.kind for d in unkicked}
    assert (unkicked[-1].kind, unkicked[-1].reason) == (plain.kind, plain.reason)
    kicked = at_budget(1500, interventions=KickConfig())
    assert [d.step for d in kicked if d.kind is DecisionKind.KICK] == [800]
    assert kicked[-1].kind is DecisionKind.EXTEND and "plateau is under way" in kicked[-1].reason
