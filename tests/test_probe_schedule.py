"""``ProbeSchedule`` holds ``probe_budget`` over the run: the probes' total stays within the
budget of the training time once the first probe is repaid, and each interval pays for its
probe. The schedule takes seconds as arguments, so every timing here is given, none measured."""

from __future__ import annotations

import itertools
import json

import pytest

from grokschedule.training.probes import ProbeSchedule

# exact in binary floating point, so the sums below hit the thresholds exactly
STEP, BUDGET = 1.0, 0.125


def _run(
    schedule: ProbeSchedule, step_seconds: list[float], costs: list[float], report_every: int = 1
) -> list[tuple[int, float, float, float]]:
    """Drive ``schedule`` over ``len(step_seconds)`` steps, probing at the reports where it is
    due, the k-th probe costing ``costs[k]`` (cycled): ``(step, cost, probe seconds before
    it, training seconds at it)`` per probe taken."""
    cost_of = itertools.cycle(costs)
    train = probe = 0.0
    taken = []
    for step, seconds in enumerate(step_seconds, start=1):
        schedule.step_done(seconds)
        train += seconds
        if step % report_every == 0 and schedule.due(step):
            cost = next(cost_of)
            schedule.probed(step, cost)
            taken.append((step, cost, probe, train))
            probe += cost
    return taken


def test_an_expensive_first_probe_is_repaid_before_the_next() -> None:
    """A probe costing 4 steps at step 10 (every = 10, 1/8 budget: 32 steps pay for it): the
    next waits until the run pays for both, step 64, not for the one alone (42)."""
    schedule = ProbeSchedule(every=10, budget=BUDGET)
    for _ in range(9):
        schedule.step_done(STEP)
    assert not schedule.due(9)
    schedule.step_done(STEP)
    assert schedule.due(10)  # the first probe's cost is unknown until it is taken
    schedule.probed(10, seconds=4.0)
    assert schedule.interval == 54  # (4 + 4) / (1/8) − 10 training seconds, at 1 s a step
    for step in range(11, 64):
        schedule.step_done(STEP)
        assert not schedule.due(step), step
    schedule.step_done(STEP)
    assert schedule.due(64)


def test_a_dearer_probe_is_repaid_and_each_interval_pays_for_its_probe() -> None:
    """Cheap and dear probes in turn (a dear one costs 8 steps, 4× the one before), slow first
    steps, a probe considered at every report. Each interval's training time pays for the probe
    that opened it, by each probe all the earlier ones are paid for plus one more at the last
    cost, and after every probe no dearer than the one before the run's total is within the
    budget; the old per-probe stretch (gap = cost / (budget · mean step)) broke all three."""
    budget = 0.01
    schedule = ProbeSchedule(every=50, budget=budget)
    step_seconds = [0.5] * 3 + [0.07] * 6000
    taken = _run(schedule, step_seconds, costs=[0.02, 0.08, 0.04], report_every=50)
    assert taken[0][0] == 50
    assert len(taken) > 10
    for (_, cost, _, at), (_, _, spent, trained) in itertools.pairwise(taken):
        assert cost <= budget * (trained - at)  # the interval pays for its probe
        assert spent + cost <= budget * trained  # all before paid, plus one more at its cost
    for (_, before, *_), (step, cost, spent, trained) in itertools.pairwise(taken):
        if cost <= before:
            assert spent + cost <= budget * trained, step


def test_the_schedule_holds_the_budget_over_a_run_with_slow_first_steps() -> None:
    """Slow first steps, then 70 ms ones, a probe costing about one step and reports every 50:
    the per-probe stretch followed a running mean the first steps inflate and probed every 50
    steps, 2.3 % of the training time; held over the run, every probe after the first keeps the
    total and its own interval within 1 %, the first one's overspend is repaid, and the probes
    are about as many as the budget pays for."""
    budget, every, cost = 0.01, 50, 0.08
    schedule = ProbeSchedule(every, budget)
    step_seconds = [0.5] * 3 + [0.07] * 2997
    taken = _run(schedule, step_seconds, [cost], report_every=50)
    train = sum(step_seconds)
    probe = cost * len(taken)
    assert taken[0][0] == every
    assert all(spent + cost <= budget * trained for _, _, spent, trained in taken[1:])
    assert probe <= budget * train
    later = list(itertools.pairwise(taken))[1:]  # each interval pays for its own probe
    assert all(cost <= budget * (b - a) for (*_, a), (*_, b) in later)
    assert len(taken) >= 0.75 * budget * train / cost
    gaps = {b - a for (a, *_), (b, *_) in itertools.pairwise(taken[1:])}
    assert gaps == {150}  # 0.08 s / (1 % of 70 ms) = 114 steps, on the next report
    # grok/probe_interval is the gap the schedule will keep (at the steps' mean time)
    step = 3000
    while not schedule.due(step):
        step += 1
        schedule.step_done(0.07)
    schedule.probed(step, cost)
    gap = 0
    while not schedule.due(step + gap):
        gap += 1
        schedule.step_done(0.07)
    assert gap == pytest.approx(schedule.interval, abs=1)
    assert gap == pytest.approx(cost / (budget * 0.07), abs=1)  # no surplus left: all spent


def test_the_state_round_trips_and_older_states_load() -> None:
    schedule = ProbeSchedule(10, 0.05)
    for _ in range(20):
        schedule.step_done(0.01)
    schedule.probed(20, 0.004)
    copy = ProbeSchedule(10, 0.05)
    copy.load_state_dict(json.loads(json.dumps(schedule.state_dict())))
    assert vars(copy) == vars(schedule)
    # the DeepSpeed trainer's former HeldBudgetSchedule saved the same keys
    held = {"interval": 12, "last_step": 20, "step_seconds": 0.01, "train_seconds": 0.2}
    held |= {"probe_seconds": 0.004, "last_cost": 0.004, "train_at_last": 0.2}
    copy.load_state_dict(held)
    assert copy.state_dict() == held
    # the per-probe schedule saved no totals: the budget is counted from the resume
    older = ProbeSchedule(10, 0.05)
    older.load_state_dict({"interval": 32, "last_step": 20, "step_seconds": 0.01})
    assert (older.interval, older.last_step, older.step_seconds) == (32, 20, 0.01)
    assert (older.train_seconds, older.probe_seconds, older.last_cost) == (0.0, 0.0, 0.0)
    assert not older.due(29) and older.due(30)


def test_the_schedule_is_validated() -> None:
    with pytest.raises(ValueError, match="probe_every must be > 0"):
        ProbeSchedule(0)
    with pytest.raises(ValueError, match=r"probe_budget must be in \(0, 1\]"):
        ProbeSchedule(10, budget=1.5)
