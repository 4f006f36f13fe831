"""Property tests: the decision core takes any metric stream without crashing (hypothesis)."""

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from grokschedule.core.contract import Observation
from grokschedule.core.decision import DecisionKind
from grokschedule.core.kick_policy import KickConfig
from grokschedule.core.phases import Phase
from grokschedule.core.policy import GrokPolicy, PolicyConfig

anything = st.floats(allow_nan=True, allow_infinity=True, width=64)
maybe = st.one_of(st.none(), anything)
observation = st.builds(
    Observation,
    step=st.floats(min_value=-1e12, max_value=1e12, allow_nan=False),
    target=anything,
    train_loss=maybe,
    train_acc=maybe,
    val_loss=maybe,
    weight_norm=maybe,
    extras=st.dictionaries(
        st.sampled_from(["grok/val_correct_prob", "grok/zero_loss_share", "grok/other"]), anything
    ),
    control=st.dictionaries(
        st.sampled_from(["control/acked_id", "control/applied_step"]),
        st.floats(min_value=-5, max_value=5, allow_nan=False),
    ),
)


@settings(max_examples=150, deadline=None)
@given(stream=st.lists(observation, max_size=60), interventions=st.booleans())
def test_any_stream_gets_a_decision_with_a_reason(stream, interventions) -> None:
    kicks = KickConfig() if interventions else None
    policy = GrokPolicy(PolicyConfig(max_t=1000, interventions=kicks))
    for obs in stream:
        decision = policy.observe("t", obs)
        assert isinstance(decision.kind, DecisionKind)
        assert decision.reason
        assert all(isinstance(v, float) for v in decision.signals.values())
        assert 0.0 <= decision.score <= 1.0 or math.isnan(decision.score)


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.floats(min_value=0, max_value=1e300), min_size=3, max_size=40))
def test_huge_finite_values_never_count_as_grokked_unless_the_target_is_met(values) -> None:
    policy = GrokPolicy(PolicyConfig(max_t=1e9))
    for step, value in enumerate(values):
        policy.observe("h", Observation(step=step, target=0.0, train_loss=value, val_loss=value))
    assert policy.trial("h").detector.phase is not Phase.GROKKED
