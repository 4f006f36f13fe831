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
