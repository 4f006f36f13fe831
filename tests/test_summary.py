"""The end-of-sweep summary and each trial's verdict, from the policy's decision logs."""

from conftest import observations

from grokschedule.core.decision import DecisionKind
from grokschedule.core.kick_policy import KickConfig
from grokschedule.core.policy import GrokPolicy, PolicyConfig
from grokschedule.core.summary import SweepSummary, TrialOutcome


def test_summary_counts_outcomes_compute_and_kicks(recorded_curves) -> None:
    policy = GrokPolicy(
        PolicyConfig(
            patience_factor=10.0, judge_after=2.0, max_t=3000, interventions=KickConfig(max_kicks=1)
        )
    )
    steps = {}
    for name in ("grokker_p47_wd1", "memorizer_p47_wd0"):
        for obs in observations(recorded_curves[name]):
            steps[name] = obs.step
            if policy.observe(name, obs).kind is DecisionKind.STOP:
                break
    outcomes = [
        TrialOutcome.of(
            name, policy.decision_log(name), policy.last_decision(name), steps[name], max_t=3000
        )
        for name in steps
    ]
    summary = SweepSummary(outcomes, max_t=3000, metric="val_acc")
    assert [t.trial_id for t in summary.grokked] == ["grokker_p47_wd1"]
    assert [t.trial_id for t in summary.stopped] == ["memorizer_p47_wd0"]
    assert summary.stopped[0].kicks == 1  # kicked once (never acknowledged), then stopped
    assert summary.grokked[0].kicks == 0  # the predictor expects it to grok by max_t: no kick
    assert summary.steps_used == 1650 + steps["memorizer_p47_wd0"]
    # The verdict in the words MLflow gives (the same judge()), the last decision in full.
    grokker, memorizer = summary.grokked[0], summary.stopped[0]
    assert grokker.verdict.outcome == "grokked at step 1650"
    assert memorizer.verdict.outcome == f"stopped at step {memorizer.steps_used:.0f}: never-grok"
    assert memorizer.last.startswith("STOP: never-grok: ")
    text = summary.render()
    assert "Interventions: 1 kicks on 1 trials, 0 rolled back; 0 kicked trials grokked" in text
    assert f"to run every trial to max_t=3,000 ({summary.steps_used / 6000:.0%})" in text


def test_a_trial_is_named_by_its_original_config_rounded_with_its_kicks_listed() -> None:
    from grokschedule.core.contract import Observation
    from grokschedule.core.kicks import WEIGHT_DECAY, Kick
    from grokschedule.core.summary import describe_config
    from grokschedule.tracking import names
    from grokschedule.tracking.timeline import verdict_tags

    kicks = KickConfig(kicks=(Kick(WEIGHT_DECAY, {"factor": 3.0}, 600),), max_kicks=1)
    policy = GrokPolicy(
        PolicyConfig(patience_factor=10.0, judge_after=2.0, max_t=3000, interventions=kicks)
    )
    for step in range(50, 1501, 50):
        policy.observe(
            "t1",
            Observation(step=step, target=0.0, train_loss=0.01, train_acc=1.0, val_loss=5.0),
        )
    kick = next(d for d in policy.decision_log("t1") if d.kind is DecisionKind.KICK)
    # The config the trial started with; a kick by restart later rewrites trial.config to
    # weight_decay=0.8999999999999999, which must not name it.
    started = {"op": "mul", "p": 61, "train_fraction": 0.35, "weight_decay": 0.3, "lr": 0.003}
    started["lr"] = 0.1 * 0.03  # 0.0030000000000000005: float noise in the original too
    outcome = TrialOutcome.of(
        "t1", policy.decision_log("t1"), policy.last_decision("t1"), 1500, 3000, config=started
    )
    assert outcome.name == "t1(op=mul,p=61,train_fraction=0.35,weight_decay=0.3,lr=0.003)"
    expected = f"step {kick.step:.0f}: weight_decay factor=3 for 600 steps"
    assert outcome.verdict.applied_kicks == (expected,)
    text = SweepSummary([outcome], max_t=3000, metric="val_acc").render()
    assert "  t1(op=mul,p=61,train_fraction=0.35,weight_decay=0.3,lr=0.003) (" in text
    assert f"    kick {expected}" in text
    assert "0.8999" not in text and "0.0030000" not in text
    assert verdict_tags(outcome.verdict)[names.KICKS_APPLIED] == expected  # MLflow: the same
    assert describe_config({"weight_decay": 0.8999999999999999, "lr": 12345.678}) == (
        "weight_decay=0.9,lr=12300"
    )


def test_the_summary_names_trials_by_what_varies_across_the_sweep() -> None:
    """An LM sweep over rank, data fraction and weight decay: each trial is named by those (short
    names, rounded values), not by a fixed list that leaves out `lm_*` keys and repeats an lr
    every trial shares."""
    shared = {"task": "lm", "lr": 3e-3, "seed": 0}
    configs = {
        "t0": {"lm_lora_rank": None, "lm_train_fraction": 0.2, "weight_decay": 0.0, **shared},
        "t1": {"lm_lora_rank": 8, "lm_train_fraction": 0.5, "weight_decay": 0.3 * 3, **shared},
    }
    trials = [
        TrialOutcome.of(trial, [], None, 100, 2000, config=config)
        for trial, config in configs.items()
    ]
    summary = SweepSummary(trials, max_t=2000, metric="val_acc")
    assert summary.names() == {
        "t0": "t0(rank=None frac=0.2 wd=0)",
        "t1": "t1(rank=8 frac=0.5 wd=0.9)",
    }
    assert "  t1(rank=8 frac=0.5 wd=0.9)" in summary.render()
    # Trials nothing tells apart keep their config in the name.
    twins = SweepSummary(
        [trials[1], TrialOutcome.of("t2", [], None, 100, 2000, config=configs["t1"])],
        2000,
        "val_acc",
    )
    assert (
        twins.names()["t2"] == "t2(lm_train_fraction=0.5,lm_lora_rank=8,weight_decay=0.9,lr=0.003)"
    )
