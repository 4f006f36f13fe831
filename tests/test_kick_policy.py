"""The policy side of interventions: when to kick, which kick, when to roll back."""

import math

import pytest
from conftest import observations

from grokschedule.core.commands import ROLLBACK, Command
from grokschedule.core.contract import Observation
from grokschedule.core.decision import DecisionKind
from grokschedule.core.kick_policy import FirstKick, KickConfig, KickPolicy, KickStats
from grokschedule.core.kicks import (
    GROKFAST,
    LORA_RANK,
    LR_CYCLE,
    LR_MULTIPLY,
    ORTHO_GRAD,
    WEIGHT_DECAY,
    Kick,
)
from grokschedule.core.phases import Phase
from grokschedule.core.policy import GrokPolicy, PolicyConfig


def _policy(predictor: bool = False, **kick_options) -> GrokPolicy:
    """The kick rules on their own; ``predictor=True`` adds the behind-schedule kick."""
    kicks = KickConfig(
        **{"kicks": (Kick(GROKFAST), Kick(LR_MULTIPLY, {"factor": 3.0}, 100))} | kick_options
    )
    return GrokPolicy(
        PolicyConfig(
            patience_factor=10.0,
            judge_after=2.0,
            max_t=3000,
            interventions=kicks,
            predictor=predictor,
        )
    )


def _ack(obs: Observation, command_id: int, step: float) -> Observation:
    control = {"control/acked_id": command_id, "control/applied_step": step}
    return Observation(**{**obs.__dict__, "control": control})


def _kicks(policy: GrokPolicy, curve: dict) -> list:
    """Replay ``curve``, acknowledging each kick at the next step (when the trainer applies it);
    the decisions up to a STOP."""
    decisions, acked = [], None
    for obs in observations(curve):
        if acked is not None:
            obs = _ack(obs, *acked)
        decision = policy.observe("m", obs)
        decisions.append(decision)
        if decision.kind is DecisionKind.KICK:
            acked = (decision.command.id, decision.step + 1)
        if decision.kind is DecisionKind.STOP:
            break
    return decisions


def test_a_run_not_predicted_to_grok_in_budget_is_kicked_at_twice_its_memorization(
    recorded_curves,
) -> None:
    policy = _policy(predictor=True)
    kicks = [
        d for d in _kicks(policy, recorded_curves["memorizer_p47_wd0"]) if d.kind.name == "KICK"
    ]
    memorized = policy.trial("m").detector.memorized_step
    assert kicks and 2 * memorized <= kicks[0].step < 0.5 * policy.patience(
        policy.trial("m").detector
    )
    assert "not predicted to grok by max_t 3000: P(grok)" in kicks[0].reason
    assert kicks[0].signals["p_grok"] < 0.5


def test_a_quiet_plateau_is_kicked_before_it_would_be_stopped(recorded_curves) -> None:
    policy = _policy()
    decisions = _kicks(policy, recorded_curves["memorizer_p47_wd0"])
    kicks = [d for d in decisions if d.kind is DecisionKind.KICK]
    assert [k.command.id for k in kicks] == [0, 1]
    assert {k.command.kick.kind for k in kicks} == {GROKFAST, LR_MULTIPLY}  # no repeats
    assert kicks[0].reason.startswith("kick ") and "patience" in kicks[0].reason
    patience = policy.patience(policy.trial("m").detector)
    assert kicks[0].step - 150 >= 0.5 * patience  # quiet for kick_at × patience first
    assert kicks[1].step - kicks[0].step >= 300  # cooldown, counted from the applied step
    final = decisions[-1]
    assert final.kind is DecisionKind.STOP and "never-grok" in final.reason
    # quiet counts from the last kick, so the stop comes a full patience after it
    assert final.step - kicks[1].step >= patience
    assert sum(s.failed for s in policy.kicks.stats.values()) == 2


def test_no_second_kick_until_the_first_is_acknowledged(recorded_curves) -> None:
    policy = _policy()
    kinds = [
        policy.observe("m", obs).kind for obs in observations(recorded_curves["memorizer_p47_wd0"])
    ]
    assert kinds.count(DecisionKind.KICK) == 1


def _plateau(policy: GrokPolicy, trial: str, until: int) -> None:
    for step in range(50, until + 1, 50):
        policy.observe(
            trial,
            Observation(step=step, target=0.0, train_loss=0.01, train_acc=1.0, val_loss=5.0),
        )


def test_a_kick_that_hurts_training_is_rolled_back_and_not_retried() -> None:
    policy = _policy(rollback_window=100)
    _plateau(policy, "h", 1000)
    log = policy.decision_log("h")
    kick = next(d for d in log if d.kind is DecisionKind.KICK)
    ack = {"control/acked_id": kick.command.id, "control/applied_step": kick.step}
    worse = dict(target=0.0, train_loss=0.09, train_acc=0.3, val_loss=5.0, control=ack)
    first = policy.observe("h", Observation(step=kick.step + 50, **worse))
    assert first.kind is DecisionKind.CONTINUE  # not yet: give it rollback_window to recover
    decision = policy.observe("h", Observation(step=kick.step + 150, **worse))
    assert decision.kind is DecisionKind.ROLLBACK
    assert decision.command == Command(kick.command.id + 1, ROLLBACK)
    assert "train_acc 1.000→0.300" in decision.reason
    state = policy.kicks.trial("h")
    assert state.harmful == {kick.command.kick.kind} and state.rollbacks == 1


def test_a_kick_that_diverges_is_rolled_back_and_the_trial_lives_on() -> None:
    policy = _policy()
    _plateau(policy, "d", 1000)
    kick = next(d for d in policy.decision_log("d") if d.kind is DecisionKind.KICK)
    ack = {"control/acked_id": kick.command.id, "control/applied_step": kick.step}
    decision = policy.observe(
        "d", Observation(step=kick.step + 50, target=0.0, train_loss=math.nan, control=ack)
    )
    assert decision.kind is DecisionKind.ROLLBACK
    assert "diverged" in decision.reason
    assert policy.trial("d").detector.phase is Phase.PLATEAU


def test_evidence_after_a_kick_credits_its_kind() -> None:
    policy = _policy()
    _plateau(policy, "c", 1000)
    kick = next(d for d in policy.decision_log("c") if d.kind is DecisionKind.KICK)
    ack = {"control/acked_id": kick.command.id, "control/applied_step": kick.step}
    for i, val_loss in enumerate([5.0, 4.0, 3.0, 2.0, 1.5]):
        policy.observe(
            "c",
            Observation(
                step=kick.step + 50 * (i + 1),
                target=0.0,
                train_loss=0.01,
                train_acc=1.0,
                val_loss=val_loss,
                control=ack,
            ),
        )
    assert policy.kicks.stats[kick.command.kick.kind].helped == 1


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (["lr_multiply", "teleport"], "teleport"),
        ({"max_kicks": 0}, "max_kicks"),
        ({"kick_at": 1.5}, "kick_at"),
        ({"kicks": ["grokfast", "grokfast"]}, "one template per kind"),
    ],
)
def test_bad_intervention_settings_name_the_field(value, field) -> None:
    with pytest.raises(ValueError, match=field):
        KickConfig.from_user(value)


def test_interventions_from_user_shorthands() -> None:
    assert KickConfig.from_user(None) is None and KickConfig.from_user(False) is None
    assert KickConfig.from_user(True) == KickConfig()
    assert [k.kind for k in KickConfig.from_user(["grokfast"]).kicks] == ["grokfast"]
    custom = KickConfig.from_user({"kicks": [{"kind": "lr_multiply", "params": {"factor": 10}}]})
    assert custom.kicks[0].params == {"factor": 10.0}


def _kinds_chosen(policy: GrokPolicy, trial: str, control: dict[str, float]) -> list[str]:
    """Kick kinds a plateau gets when every kick is acknowledged at once."""
    kinds: list[str] = []
    for step in range(50, 3000, 50):
        obs = Observation(
            step=step, target=0.0, train_loss=0.01, train_acc=1.0, val_loss=5.0, control=control
        )
        decision = policy.observe(trial, obs)
        if decision.kind is DecisionKind.KICK:
            kinds.append(decision.command.kick.kind)
            control = {**control, "control/acked_id": decision.command.id}
            control["control/applied_step"] = step
    return kinds


def test_no_weight_decay_kick_at_zero_or_past_the_cap_and_untried_kinds_go_in_order() -> None:
    def policy(**options) -> GrokPolicy:
        kicks = KickConfig(
            kicks=(Kick(WEIGHT_DECAY, {"factor": 10.0}), Kick(LR_MULTIPLY, {"factor": 3.0}, 100)),
            max_kicks=2,
            cooldown=0,
            **options,
        )
        return GrokPolicy(
            PolicyConfig(patience_factor=10.0, judge_after=2.0, max_t=3000, interventions=kicks)
        )

    both = [WEIGHT_DECAY, LR_MULTIPLY]  # in the order listed: nothing judged yet
    assert _kinds_chosen(policy(), "w", {"control/weight_decay": 0.1}) == both
    assert _kinds_chosen(policy(), "u", {}) == both  # weight decay unknown: allowed
    assert _kinds_chosen(policy(), "z", {"control/weight_decay": 0.0}) == [LR_MULTIPLY]
    capped = policy(max_weight_decay=1.0)
    assert _kinds_chosen(capped, "c", {"control/weight_decay": 0.1}) == both  # 0.1 × 10 ≤ 1
    assert _kinds_chosen(capped, "s", {"control/weight_decay": 0.5}) == [LR_MULTIPLY]
    with pytest.raises(ValueError, match="max_weight_decay must be > 0"):
        KickConfig(max_weight_decay=0.0)


def test_a_kick_its_trainable_cannot_carry_out_is_not_counted_nor_chosen_again() -> None:
    policy = _policy(max_kicks=1)
    _plateau(policy, "n", 1000)
    kick = next(d for d in policy.decision_log("n") if d.kind is DecisionKind.KICK)
    skipped = policy.kicks.not_applied("n", kick.command.id)
    assert skipped.kind == kick.command.kick.kind
    state = policy.kicks.trial("n")
    assert state.used == 0 and not state.pending and state.unavailable == {skipped.kind}
    assert all(s.helped == s.failed == 0 for s in policy.kicks.stats.values())
    nxt = policy.observe(
        "n", Observation(step=1050, target=0.0, train_loss=0.01, train_acc=1.0, val_loss=5.0)
    )
    assert nxt.kind is DecisionKind.KICK and nxt.command.kick.kind != skipped.kind
    assert nxt.command.id == kick.command.id + 1  # ids still grow


def test_a_kick_the_trainer_acknowledges_as_not_applied_is_given_back() -> None:
    """The live path of the same rule: a DeepSpeed engine reports a gradient-transform kick as
    ``control/not_applied_id``; the policy neither counts nor credits it and picks another kind."""
    policy = _policy(max_kicks=1)
    _plateau(policy, "d", 1000)
    kick = next(d for d in policy.decision_log("d") if d.kind is DecisionKind.KICK)
    command_id = kick.command.id
    ack = {
        "control/acked_id": command_id,
        "control/applied_step": -1,
        "control/not_applied_id": command_id,
    }
    nxt = policy.observe(
        "d",
        Observation(
            step=1050, target=0.0, train_loss=0.01, train_acc=1.0, val_loss=5.0, control=ack
        ),
    )
    state = policy.kicks.trial("d")
    assert state.unavailable == {kick.command.kick.kind} and not state.applied
    assert nxt.kind is DecisionKind.KICK and nxt.command.kick.kind != kick.command.kick.kind
    assert all(s.helped == s.failed == 0 for s in policy.kicks.stats.values())


def test_a_trainer_that_cannot_transform_gradients_never_gets_a_gradient_kick() -> None:
    """``control/grad_transforms`` 0 (the DeepSpeed engine) rules out Grokfast, noise and ⊥Grad
    up front — with the default kicks, where ⊥Grad is the first pick at weak decay."""
    kicks = KickConfig()  # the defaults: lr cycle, lr ×3, ⊥Grad, weight decay ×3
    policy = GrokPolicy(
        PolicyConfig(patience_factor=10.0, judge_after=2.0, max_t=3000, interventions=kicks)
    )
    weak = {"control/weight_decay": 0.1, "control/acked_id": -1}
    assert _kinds_chosen(policy, "torch", weak)[0] == "ortho_grad"
    zero = {**weak, "control/grad_transforms": 0}
    chosen = _kinds_chosen(policy, "zero", zero)
    assert chosen and not {"ortho_grad", "grokfast", "grad_noise"} & set(chosen)


def test_a_kick_credited_as_helping_is_still_rolled_back_if_it_diverges_later() -> None:
    policy = _policy()
    _plateau(policy, "late", 1000)
    kick = next(d for d in policy.decision_log("late") if d.kind is DecisionKind.KICK)
    ack = {"control/acked_id": kick.command.id, "control/applied_step": kick.step}
    step = kick.step
    for val_loss in [5.0, 4.0, 3.0, 2.0, 1.5]:
        step += 50
        obs = Observation(
            step=step, target=0.0, train_loss=0.01, train_acc=1.0, val_loss=val_loss, control=ack
        )
        policy.observe("late", obs)
    assert policy.kicks.stats[kick.command.kick.kind].helped == 1
    blown = Observation(step=step + 50, target=0.0, train_loss=math.inf, control=ack)
    decision = policy.observe("late", blown)
    assert decision.kind is DecisionKind.ROLLBACK and "diverged" in decision.reason


# -- the first kick by what is known of a trial; staggered first kicks ---------------------------
THREE = (
    Kick(GROKFAST),
    Kick(LR_MULTIPLY, {"factor": 3.0}, 100),
    Kick(WEIGHT_DECAY, {"factor": 3.0}, 600),
)
TRAIN = (0.01, 1.0)


def _seen(kicks: KickPolicy, trial: str, weight_decay: float, norms: list[float]) -> None:
    """The trial's weight decay and its weight norm every 100 steps, as the trainer reports."""
    for i, norm in enumerate(norms):
        kicks.absorb(trial, {"control/weight_decay": weight_decay}, TRAIN, 100.0 * i, norm)


def test_the_first_kick_depends_on_weight_decay_and_norm_trend() -> None:
    rules = (
        FirstKick(WEIGHT_DECAY, min_weight_decay=0.01, max_weight_decay=0.5),
        FirstKick(LR_MULTIPLY, norm="rising"),
    )
    kicks = KickPolicy(KickConfig(kicks=THREE, first=rules, probe_trials=0, norm_window=200))
    _seen(kicks, "weak decay", 0.1, [10.0, 10.0, 10.0])
    _seen(kicks, "rising norm", 1.0, [10.0, 11.0, 12.0])
    _seen(kicks, "flat norm", 1.0, [10.0, 10.0, 10.0])
    assert kicks.norm_trend("rising norm") == pytest.approx(math.log(1.2))
    chosen = {trial: kicks.choose(trial, 300.0, TRAIN)[1].kind for trial in kicks.trials}
    assert chosen == {
        "weak decay": WEIGHT_DECAY,  # would be grokfast by list order
        "rising norm": LR_MULTIPLY,
        "flat norm": GROKFAST,  # no rule matches: the list's order
    }
    assert "first for wd 0.1" in kicks.trial("weak decay").why
    # Without the rules every untried trial would get the first kind listed that is not in
    # flight: the rules, not the order, made the choice above.
    plain = KickPolicy(KickConfig(kicks=THREE, probe_trials=0))
    _seen(plain, "weak decay", 0.1, [10.0, 10.0, 10.0])
    assert plain.choose("weak decay", 300.0, TRAIN)[1].kind == GROKFAST


def test_only_the_probe_cohort_is_kicked_before_the_first_verdict() -> None:
    kicks = KickPolicy(KickConfig(kicks=THREE, probe_trials=2, probe_wait=300))
    first = {trial: kicks.choose(trial, 500.0, TRAIN) for trial in ("a", "b", "c", "d")}
    assert first["c"] is None and first["d"] is None  # outside the cohort: they wait
    # The cohort tries two kinds at once, not the same one twice.
    assert [first[t][1].kind for t in ("a", "b")] == [GROKFAST, LR_MULTIPLY]
    assert kicks.cohort == ["a", "b"]
    assert kicks.choose("c", 700.0, TRAIN) is None  # still no verdict, waited 200 < 300
    kicks.absorb("a", {"control/acked_id": 0, "control/applied_step": 501.0}, TRAIN)
    kicks.credit("a", evidence_step=650.0, grokked=False)  # the first verdict: grokfast helped
    assert kicks.stats[GROKFAST].helped == 1
    assert kicks.choose("c", 750.0, TRAIN) is not None  # the verdict frees the others


def test_a_trial_outside_the_cohort_waits_no_longer_than_probe_wait() -> None:
    kicks = KickPolicy(KickConfig(kicks=THREE, probe_trials=1, probe_wait=300))
    assert kicks.choose("a", 500.0, TRAIN) is not None
    assert kicks.choose("b", 500.0, TRAIN) is None
    assert kicks.choose("b", 750.0, TRAIN) is None
    late = kicks.choose("b", 800.0, TRAIN)  # 300 steps after it was first ready: kicked anyway
    assert late is not None and late[1].kind == GROKFAST  # its own pick: no spread outside


def test_a_kick_with_no_evidence_for_verdict_after_steps_has_failed() -> None:
    kicks = KickPolicy(KickConfig(kicks=THREE, probe_trials=0, verdict_after=1000))
    kicks.choose("a", 500.0, TRAIN)
    kicks.absorb("a", {"control/acked_id": 0, "control/applied_step": 501.0}, TRAIN)
    kicks.credit("a", evidence_step=None, grokked=False, step=1400.0)
    assert kicks.stats[GROKFAST] == KickStats()  # not yet
    kicks.credit("a", evidence_step=None, grokked=False, step=1501.0)
    assert kicks.stats[GROKFAST].failed == 1


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"probe_trials": -1}, "probe_trials"),
        ({"probe_trials": 1.5}, "probe_trials"),
        ({"verdict_after": 0}, "verdict_after"),
        ({"first": [{"kind": "teleport"}]}, "FirstKick.kind"),
        ({"first": [{"kind": "grokfast", "norm": "up"}]}, "FirstKick.norm"),
    ],
)
def test_bad_first_kick_and_probe_settings_name_the_field(options, field) -> None:
    with pytest.raises(ValueError, match=field):
        KickConfig.from_user(options)


# -- the LoRA-rank kick: LM trials with an adapter that can grow, and only those -----------------
def test_a_lora_rank_kick_goes_first_to_a_trial_whose_adapter_can_grow_and_only_there() -> None:
    kicks = KickPolicy(KickConfig(probe_trials=0, max_kicks=len(KickConfig().kicks), cooldown=0))
    seen = {
        "lm": {"control/lora_rank": 8, "control/weight_decay": 0.1},
        "at the cap": {"control/lora_rank": 32, "control/weight_decay": 0.1},  # 128 > 64
        "narrow layers": {"control/lora_rank": 8, "control/lora_rank_limit": 16},  # 32 > 16
        "mlp": {"control/weight_decay": 0.1},
    }
    for trial, control in seen.items():
        kicks.absorb(trial, control, TRAIN)
    first = {trial: kicks.choose(trial, 300.0, TRAIN)[1].kind for trial in seen}
    assert first == {
        "lm": LORA_RANK,
        "at the cap": ORTHO_GRAD,  # what the weight-decay rule gives without the kind
        "narrow layers": LR_CYCLE,  # weight decay unknown: no rule, the list's order
        "mlp": ORTHO_GRAD,
    }
    assert "LoRA rank 8 → 32" in kicks.trial("lm").why
    # Every kick a trial without an adapter can get, acknowledged one after another: never it.
    for trial in ("mlp", "at the cap"):
        for command_id in range(len(KickConfig().kicks)):
            kicks.absorb(trial, {"control/acked_id": command_id}, TRAIN)
            chosen = kicks.choose(trial, 400.0 + command_id, TRAIN)
            assert chosen is None or chosen[1].kind != LORA_RANK
    with pytest.raises(ValueError, match="max_lora_rank must be an int >= 1"):
        KickConfig(max_lora_rank=0)


def _late_kick(verdict_after: float | None) -> tuple[GrokPolicy, list]:
    """A plateau kicked at 900 with ``max_t`` 1000, acknowledged at the next step: the
    decisions until it stops (a flat curve: no evidence ever comes)."""
    policy = GrokPolicy(
        PolicyConfig(
            patience_factor=10.0,
            max_t=1000,
            max_extension=2000,
            predictor=False,
            interventions=KickConfig(
                kicks=(Kick(GROKFAST),), max_kicks=1, verdict_after=verdict_after
            ),
        )
    )
    decisions, control = [], {}
    for step in range(50, 3050, 50):
        flat = dict(target=0.0, train_loss=0.01, train_acc=1.0, val_loss=5.0, control=control)
        decision = policy.observe("late", Observation(step=step, **flat))
        decisions.append(decision)
        if decision.kind is DecisionKind.KICK:
            control = {"control/acked_id": decision.command.id, "control/applied_step": step + 1}
        if decision.kind is DecisionKind.STOP:
            break
    return policy, decisions


def test_a_kick_shortly_before_max_t_is_paid_for_until_its_verdict() -> None:
    policy, decisions = _late_kick(verdict_after=1000)
    kick = next(d for d in decisions if d.kind is DecisionKind.KICK)
    assert kick.step == 900
    extended = [d for d in decisions if d.kind is DecisionKind.EXTEND]
    assert [d.step for d in extended] == list(range(1000, 1901, 50))
    assert "its grokfast kick at 901 awaits its verdict" in extended[0].reason
    assert "1000 steps without it, by 1901" in extended[0].reason
    stop = decisions[-1]
    assert stop.kind is DecisionKind.STOP and stop.step == 1950  # the kick failed at 1901
    assert "nothing under way or predicted to pay for more" in stop.reason
    assert policy.kicks.stats[GROKFAST].failed == 1


def test_a_late_kick_with_no_verdict_window_runs_to_the_end_of_the_extension() -> None:
    _, decisions = _late_kick(verdict_after=None)
    assert decisions[-1].kind is DecisionKind.STOP and decisions[-1].step == 3000
    assert "reached the end of the extension (max_t 1000 + 2000)" in decisions[-1].reason


def test_a_late_kick_that_was_rolled_back_does_not_pay_for_an_extension() -> None:
    kicks = KickPolicy(KickConfig(kicks=THREE, probe_trials=0))
    kicks.choose("r", 900.0, TRAIN)
    kicks.absorb("r", {"control/acked_id": 0, "control/applied_step": 901.0}, TRAIN)
    assert kicks.awaiting_verdict("r") == (kicks.trial("r").applied[0][1], 901.0)
    kicks.order_rollback("r")
    assert kicks.awaiting_verdict("r") is None
