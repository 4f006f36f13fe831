import json
import math

import pytest
from conftest import DATA, observations

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


# -- divergence and slingshots (train-loss spikes after memorization that come back) -----------

SLINGSHOTS = json.loads((DATA / "slingshot_curves.json").read_text())


def _every(curve: dict, every: int, start: float = 0) -> dict:
    """``curve`` as a trial reporting every ``every`` steps from ``start`` on would report it."""
    keep = [j for j, step in enumerate(curve["step"]) if step >= start and step % every == 0]
    return {name: [values[j] for j in keep] for name, values in curve.items()}


def _replay(curve: dict, **options) -> PhaseDetector:
    tracker = PhaseDetector(PhaseConfig(grok_threshold=0.95, **options))
    for obs in observations(curve):
        tracker.update(obs)
    return tracker


@pytest.mark.parametrize("name", sorted(SLINGSHOTS))
@pytest.mark.parametrize("every", [100, 500])
@pytest.mark.parametrize("options", [{}, {"chance_loss": math.log(59)}], ids=["", "chance"])
def test_recorded_slingshots_are_never_divergence(name: str, every: int, options: dict) -> None:
    recorded = SLINGSHOTS[name]
    curve = _every(recorded["curve"], max(every, recorded["every"]))
    # What the old rule read as a blow-up: a spike over 10× the first reported loss.
    assert max(curve["train_loss"]) > 10 * curve["train_loss"][0]
    tracker = _replay(curve, **options)
    assert Phase.DIVERGED not in [change.new for change in tracker.changes]
    assert tracker.signals["slingshots"] >= 1
    if recorded["grok_step"] is not None:
        assert tracker.phase is Phase.GROKKED
        assert tracker.grokked_step == _first_grokked(curve)


def _first_grokked(curve: dict) -> float:
    return next(s for s, acc in zip(curve["step"], curve["val_acc"], strict=True) if acc >= 0.95)


def test_a_slingshot_is_counted_with_its_height_and_step() -> None:
    curve = SLINGSHOTS["slingshot_grokker_sub_f07"]["curve"]  # spikes at 3200 (0.0053), 4000 (1.24)
    tracker = _tracker()
    seen = []
    for obs in observations(curve):
        tracker.update(obs)
        seen.append(tracker.signals.get("slingshots"))
    steps = curve["step"]
    assert seen[0] == 0.0  # watched from the first memorized result (train_acc 1.0 at step 100)
    assert seen[steps.index(3200)] == 0.0  # a spike still up is not counted yet
    assert seen[steps.index(3300)] == 1.0 and seen[steps.index(4100)] == 2.0
    assert tracker.signals["last_slingshot_step"] == 4000
    # log10(peak / running minimum), the minimum read as at least slingshot_floor 1e-4
    assert tracker.signals["slingshot_height"] == pytest.approx(math.log10(1.24 / 1e-4), abs=0.01)
    assert tracker.changes[-1].new is Phase.GROKKED
    assert tracker.changes[-1].signals["slingshots"] == 2.0  # kept with the phase changes too


def _visited(tracker: PhaseDetector) -> list[Phase]:
    return [tracker.changes[0].old] + [change.new for change in tracker.changes]


@pytest.mark.parametrize("name", ["slingshot_grokker_sub_f07", "slingshot_grokker_mul_f05"])
def test_a_first_report_after_memorization_changes_nothing(name: str) -> None:
    curve = SLINGSHOTS[name]["curve"]
    full = _replay(curve)
    for late in (_every(curve, 100, start=500), _every(curve, 500, start=500)):
        # first seen far later into memorization: its first loss ~1e-4, 80× under step 100's
        assert late["train_loss"][0] < curve["train_loss"][0] / 80 < 1e-4
        tracker = _replay(late)
        assert _visited(tracker) == _visited(full)
        assert tracker.grokked_step == _first_grokked(late)
        assert tracker.signals["slingshots"] >= 1


def _memorized_then(losses: list[float], first: float = 1e-4, **options) -> PhaseDetector:
    """A run first seen memorized (train loss ``first``), then reporting ``losses``."""
    tracker = _tracker_with(**options)
    tracker.update(Observation(step=100, target=0.02, train_loss=first, train_acc=1.0))
    for i, loss in enumerate(losses):
        acc = 1.0 if loss < 0.01 else 0.02
        tracker.update(Observation(step=200 + 100 * i, target=0.02, train_loss=loss, train_acc=acc))
    return tracker


def _tracker_with(**options) -> PhaseDetector:
    return PhaseDetector(PhaseConfig(grok_threshold=0.95, **options))


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"train_loss": math.nan}, "train_loss is nan"),
        ({"train_loss": math.inf}, "train_loss is inf"),
        ({"target": math.nan}, "target is nan"),
    ],
)
def test_a_non_finite_value_is_divergence_at_once(value: dict, reason: str) -> None:
    tracker = _memorized_then([1e-5, 1e-5])
    blown = {"step": 500, "target": 0.1, "train_loss": 1e-5, "train_acc": 1.0} | value
    assert tracker.update(Observation(**blown)) is Phase.DIVERGED
    assert tracker.changes[-1].reason == reason


def test_a_loss_back_at_chance_that_stays_is_divergence() -> None:
    chance = math.log(97)
    back = _memorized_then([1e-5] * 3 + [chance + 0.01] * 5, chance_loss=chance)
    assert back.phase is Phase.DIVERGED and back.step == 200 + 7 * 100  # the 5th result there
    assert back.changes[-1].reason == (
        f"train_loss 4.58 stayed above chance_loss {chance:.3g} for 5 results without coming down"
    )
    once = _memorized_then([1e-5] * 3 + [chance + 0.01] * 4 + [1e-5], chance_loss=chance)
    assert once.phase is Phase.PLATEAU  # four results there, then back down: not yet
    coming_down = [200.0 * 0.85**i for i in range(40)]  # 24 results above chance, each lower
    assert _memorized_then([1e-5] * 3 + coming_down, chance_loss=chance).phase is Phase.PLATEAU


def test_without_a_chance_level_the_first_loss_before_memorization_stands_in() -> None:
    tracker = _tracker()
    tracker.update(Observation(step=10, target=0.01, train_loss=4.5, train_acc=0.01))  # untrained
    for step in range(20, 100, 10):
        tracker.update(Observation(step=step, target=0.01, train_loss=1e-5, train_acc=1.0))
    for step in range(100, 150, 10):
        tracker.update(Observation(step=step, target=0.01, train_loss=4.6, train_acc=0.01))
    assert tracker.phase is Phase.DIVERGED
    reason = tracker.changes[-1].reason
    assert "stayed above the chance level (its first train_loss) 4.5 for 5 results" in reason


def test_a_loss_not_yet_down_from_its_start_is_not_divergence() -> None:
    # Adam's first steps push an untrained loss a little above ln 97 for a while: not "back".
    tracker = _tracker_with(chance_loss=math.log(97))
    losses = [4.4, 4.8, 4.9, 4.9, 4.7, 4.6, 4.6, 3.0, 1.0, 0.1]
    for step, loss in enumerate(losses):
        tracker.update(Observation(step=step, target=0.01, train_loss=loss, train_acc=0.01))
    assert tracker.phase is Phase.MEMORIZING


def test_with_no_chance_level_and_a_late_first_report_only_a_lasting_blow_up_diverges() -> None:
    # First seen memorized (1e-4): no chance level to read. A slingshot back to 5 and down,
    # however slowly (by more than 10 % a result), never diverges ...
    slow = [500.0 * 0.85**i for i in range(60)]  # 40 results above ln 2
    assert _memorized_then(slow).phase is not Phase.DIVERGED
    # ... nor does a spike that stays up for five results: the bank's longest streak above ln 2
    assert _memorized_then([1e-5, 5.0, 4.8, 5.0, 4.9, 5.0, 1e-5]).phase is not Phase.DIVERGED
    # while a loss that sits above ln 2 for 3 × diverge_results results has blown up.
    stuck = _memorized_then([1e-5] + [40.0] * 15)
    assert stuck.phase is Phase.DIVERGED and stuck.step == 200 + 15 * 100
    assert "above ln 2 (no chance level: the first report came after memorization)" in (
        stuck.changes[-1].reason
    )
    assert _memorized_then([1e-5] + [40.0] * 14).phase is not Phase.DIVERGED


def test_a_rollback_out_of_divergence_starts_the_streak_again() -> None:
    tracker = _memorized_then([1e-5] + [4.7] * 5, chance_loss=4.57)
    assert tracker.phase is Phase.DIVERGED
    tracker.resume_plateau("rolled back")
    for step in range(800, 1200, 100):  # four more results at chance: a fresh streak of 4
        tracker.update(Observation(step=step, target=0.02, train_loss=4.7, train_acc=0.02))
    assert tracker.phase is Phase.PLATEAU


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"diverge_results": 0}, "diverge_results"),
        ({"chance_loss": 0.0}, "chance_loss"),
        ({"chance_loss": math.inf}, "chance_loss"),
        ({"slingshot_factor": 1.0}, "slingshot_factor"),
        ({"slingshot_floor": 0.0}, "slingshot_floor"),
    ],
)
def test_bad_divergence_settings_name_the_field(options: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        PhaseConfig(grok_threshold=0.95, **options)
