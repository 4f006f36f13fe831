import math

from conftest import observations

from grokschedule.core.contract import Observation
from grokschedule.core.phases import Phase, PhaseConfig, PhaseDetector


def _tracker() -> PhaseDetector:
    return PhaseDetector(PhaseConfig(grok_threshold=0.95))


def test_a_recorded_grokker_walks_through_every_phase(recorded_curves) -> None:
    tracker = _tracker()
    for obs in observations(recorded_curves["grokker_p47_wd1"]):
        tracker.update(obs)
    visited = [tracker.changes[0].old] + [change.new for change in tracker.changes]
    assert visited == [
        Phase.WARMUP,
        Phase.MEMORIZING,
        Phase.PLATEAU,
        Phase.TRANSITION,
        Phase.GROKKED,
    ]
    assert tracker.grokked_step == 1650
    assert tracker.memorized_step is not None and tracker.memorized_step < 300
    transition = next(c for c in tracker.changes if c.new is Phase.TRANSITION)
    assert transition.signals["val_loss_change"] < 0  # evidence is kept with the change


def test_a_memorizer_shows_no_transition_evidence_on_its_plateau(recorded_curves) -> None:
    tracker = _tracker()
    fired = set()
    for obs in observations(recorded_curves["memorizer_p47_wd0"]):
        if obs.step > 1500:  # the policy has stopped it by then (tests/test_policy.py)
            break
        tracker.update(obs)
        fired.update(tracker.fired if tracker.phase is Phase.PLATEAU else ())
    assert tracker.phase is Phase.PLATEAU
    assert fired == set()
    assert tracker.signals["val_loss_change"] > 0  # validation loss rising: memorizing harder
    assert tracker.signals["zero_loss_share"] > 0.4  # softmax collapse under way, arXiv 2501.04697


def test_non_finite_loss_is_divergence() -> None:
    tracker = _tracker()
    tracker.update(Observation(step=1, target=0.1, train_loss=2.0, train_acc=0.1))
    phase = tracker.update(Observation(step=2, target=0.1, train_loss=math.nan, train_acc=0.1))
    assert phase is Phase.DIVERGED
    assert "train_loss is nan" in tracker.changes[-1].reason
    # terminal phases stay put
    assert tracker.update(Observation(step=3, target=0.99, train_loss=0.1)) is Phase.DIVERGED


def test_min_mode_reads_a_loss_target() -> None:
    tracker = PhaseDetector(PhaseConfig(grok_threshold=0.1, mode="min"))
    for step, loss in enumerate([3.0, 2.0, 1.0, 0.05]):
        tracker.update(Observation(step=step, target=loss, train_loss=0.001, train_acc=1.0))
    assert tracker.phase is Phase.GROKKED
    assert tracker.grokked_step == 3
