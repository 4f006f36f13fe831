"""Adam slingshots (train-loss spikes after memorization that come back, Thilak et al. 2022) are
a sign for grokking: the policy must neither stop a run for one nor roll back a kick that set
one off, while a loss that blows up or goes back to chance still ends the run or the kick."""

import json
import math

import pytest
from conftest import DATA, observations

from grokschedule.core.contract import Observation
from grokschedule.core.kick_policy import KickConfig
from grokschedule.core.kicks import GROKFAST, Kick
from grokschedule.core.phases import Phase
from grokschedule.core.policy import Decision, DecisionKind, GrokPolicy, PolicyConfig

SLINGSHOTS = json.loads((DATA / "slingshot_curves.json").read_text())


def _every(curve: dict, every: int) -> dict:
    keep = [j for j, step in enumerate(curve["step"]) if step % every == 0]
    return {name: [values[j] for j in keep] for name, values in curve.items()}


@pytest.mark.parametrize("name", sorted(SLINGSHOTS))
@pytest.mark.parametrize("every", [100, 500])
@pytest.mark.parametrize("predictor", [True, False])
def test_the_policy_never_stops_a_recorded_slingshot_run_as_diverged(
    name, every, predictor
) -> None:
    recorded = SLINGSHOTS[name]
    policy = GrokPolicy(PolicyConfig(max_t=25_000, predictor=predictor))
    decisions = []
    for obs in observations(_every(recorded["curve"], max(every, recorded["every"]))):
        decisions.append(policy.observe("s", obs))
        if decisions[-1].kind is DecisionKind.STOP:
            break
    assert not any(d.reason.startswith("diverged") for d in decisions)
    assert all("slingshots" in d.signals for d in decisions)  # every report: first is memorized
    if recorded["grok_step"] is not None and not predictor:  # P(grok) may stop it: not divergence
        assert decisions[-1].reason.startswith("grokked at step")
        assert decisions[-1].signals["slingshots"] >= 1
        assert decisions[-1].signals["last_slingshot_step"] < recorded["grok_step"]


# -- kicks -----------------------------------------------------------------------------------


def _kicked(trial: str, **options) -> tuple[GrokPolicy, Decision, dict[str, float]]:
    """A policy whose trial sat on a plateau (train loss 0.01) until it got a kick; the kick,
    and the acknowledgement the trainer reports from then on."""
    phases = options.pop("phases", {})
    kicks = KickConfig(kicks=(Kick(GROKFAST),), max_kicks=1, **options)
    policy = GrokPolicy(PolicyConfig(max_t=3000, interventions=kicks, phases=phases))
    for step in range(50, 1001, 50):
        obs = Observation(step=step, target=0.0, train_loss=0.01, train_acc=1.0, val_loss=5.0)
        policy.observe(trial, obs)
    kick = next(d for d in policy.decision_log(trial) if d.kind is DecisionKind.KICK)
    ack = {"control/acked_id": kick.command.id, "control/applied_step": kick.step}
    return policy, kick, ack


def _after(policy: GrokPolicy, trial: str, kick: Decision, ack: dict, train: list) -> list:
    """Report ``(train_loss, train_acc)`` pairs every 100 steps after the kick."""
    decisions = []
    for i, (loss, acc) in enumerate(train):
        obs = Observation(
            step=kick.step + 50 + 100 * i,
            target=0.0,
            train_loss=loss,
            train_acc=acc,
            val_loss=5.0,
            control=ack,
        )
        decisions.append(policy.observe(trial, obs))
    return decisions


def test_a_kick_followed_by_a_spike_that_comes_back_is_not_rolled_back() -> None:
    policy, kick, ack = _kicked("k", rollback_window=200)
    # Worse than before for 300 steps, the window is 200: but every report is half the last.
    spike = [(3.0, 0.3), (0.4, 0.8), (0.15, 0.95), (0.02, 1.0), (0.01, 1.0)]
    decisions = _after(policy, "k", kick, ack, spike)
    assert [d.kind for d in decisions] == [DecisionKind.CONTINUE] * len(spike)
    assert policy.kicks.trial("k").rollbacks == 0
    assert decisions[-1].signals["slingshots"] == 1.0
    assert decisions[-1].signals["slingshot_height"] == pytest.approx(math.log10(3.0 / 0.01))
    assert decisions[-1].signals["last_slingshot_step"] == kick.step + 50


def test_a_kick_that_sends_the_loss_back_to_chance_is_rolled_back() -> None:
    policy, kick, ack = _kicked("c", rollback_window=200)
    decisions = _after(policy, "c", kick, ack, [(4.6, 0.01), (4.5, 0.01), (4.6, 0.01)])
    assert [d.kind for d in decisions[:2]] == [DecisionKind.CONTINUE] * 2
    assert decisions[2].kind is DecisionKind.ROLLBACK  # 200 steps at chance, not coming down
    assert "did not recover in 200 steps" in decisions[2].reason
    assert "train_loss 0.01→4.6" in decisions[2].reason


def test_a_loss_that_comes_down_but_stays_worse_is_rolled_back_once_it_stops_falling() -> None:
    policy, kick, ack = _kicked("w", rollback_window=200)
    train = [(3.0, 0.3), (1.0, 0.6), (0.4, 0.8), (0.4, 0.8), (0.4, 0.8)]
    kinds = [d.kind for d in _after(policy, "w", kick, ack, train)]
    assert kinds == [DecisionKind.CONTINUE] * 4 + [DecisionKind.ROLLBACK]


def test_with_a_chance_level_a_loss_back_at_chance_diverges_and_the_kick_is_rolled_back() -> None:
    chance = math.log(97)
    policy, kick, ack = _kicked("d", rollback_window=10_000, phases={"chance_loss": chance})
    decisions = _after(policy, "d", kick, ack, [(4.6, 0.01)] * 5)
    assert [d.kind for d in decisions] == [DecisionKind.CONTINUE] * 4 + [DecisionKind.ROLLBACK]
    assert decisions[-1].reason.endswith("diverged")
    assert policy.trial("d").detector.phase is Phase.PLATEAU  # the trial goes on from its snapshot


def test_a_non_finite_loss_during_a_spike_rolls_back_at_once() -> None:
    policy, kick, ack = _kicked("n", rollback_window=10_000)
    decisions = _after(policy, "n", kick, ack, [(3.0, 0.3), (math.inf, 0.0)])
    assert [d.kind for d in decisions] == [DecisionKind.CONTINUE, DecisionKind.ROLLBACK]
    assert decisions[-1].reason.endswith("diverged")


def test_rollback_recovery_must_be_above_one() -> None:
    with pytest.raises(ValueError, match="rollback_recovery"):
        KickConfig(rollback_recovery=1.0)
