"""``grokschedule bench probes --task lm`` on a tiny LM, and the trainer probes' schedule holding
the budget over a run (what the bench found the per-probe stretch did not)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from grokschedule.bench.lm_probes import VARIANTS, LMProbeOptions


def test_the_schedule_holds_the_budget_over_a_run_with_slow_first_steps() -> None:
    """Slow first steps, then 70 ms ones, a probe costing about one step and reports every 50:
    the per-probe stretch (``ProbeSchedule``) follows a running mean the first steps inflate and
    probes every 50 steps, 2.3 % of the training time; held over the run, every probe after the
    first keeps the total and its own interval within 1 %, the first one's overspend is repaid,
    and the probes are about as many as the budget pays for."""
    pytest.importorskip("deepspeed")
    from grokschedule.training.deepspeed.trainer_probes import HeldBudgetSchedule

    budget, every, cost = 0.01, 50, 0.08
    schedule = HeldBudgetSchedule(every, budget)
    train = probe = 0.0
    taken = []
    for step in range(1, 3001):
        seconds = 0.5 if step <= 3 else 0.07
        schedule.step_done(seconds)
        train += seconds
        if step % 50 == 0 and schedule.due(step):
            schedule.probed(step, cost)
            probe += cost
            taken.append((step, probe, train))
    assert taken[0][0] == every  # the first probe's cost is unknown until it is taken
    assert all(spent <= budget * trained for _, spent, trained in taken[1:])
    assert probe <= budget * train
    later = list(itertools.pairwise(taken))[1:]  # each interval pays for its own probe
    assert all(cost <= budget * (b - a) for (_, _, a), (_, _, b) in later)
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


def test_the_schedule_state_round_trips_and_an_older_one_loads() -> None:
    pytest.importorskip("deepspeed")
    from grokschedule.training.deepspeed.trainer_probes import HeldBudgetSchedule
    from grokschedule.training.probes import ProbeSchedule

    schedule = HeldBudgetSchedule(10, 0.05)
    for _ in range(20):
        schedule.step_done(0.01)
    schedule.probed(20, 0.004)
    copy = HeldBudgetSchedule(10, 0.05)
    copy.load_state_dict(json.loads(json.dumps(schedule.state_dict())))
    assert vars(copy) == vars(schedule)
    older = HeldBudgetSchedule(10, 0.05)
    older.load_state_dict(ProbeSchedule(10, 0.05).state_dict())  # no totals: counted from here
    assert (older.train_seconds, older.probe_seconds, older.last_cost) == (0.0, 0.0, 0.0)


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="probe_every must be an int > 0, got 0"):
        LMProbeOptions(probe_every=0)
    with pytest.raises(ValueError, match="probe_budget must be in"):
        LMProbeOptions(probe_budget=1.5)
    with pytest.raises(ValueError, match="op must be 'add' or 'compose', got 'mul'"):
        LMProbeOptions(op="mul")


@pytest.mark.slow
def test_a_tiny_bench_measures_every_signal_and_the_loop(
    process_group: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both models, both loops, through the command's entry point: the table printed, the JSON
    written, and the probes taken following the schedule's rule."""
    pytest.importorskip("deepspeed")
    pytest.importorskip("peft")
    from grokschedule.bench.probes import probes_bench_main

    out = tmp_path / "lm.json"
    argv = "--task lm --tiny --lm-op compose --steps 40 --repeats 1 --probe-every 10 "
    argv += f"--eval-every 10 --probe-budget 0.5 --output {out}"
    assert probes_bench_main(argv.split()) == 0
    rows = json.loads(out.read_text())["lm"]
    assert [r["variant"] for r in rows] == list(VARIANTS)
    dense, moe = rows
    for r in rows:
        costs = r["costs_ms"]
        for key in ("step_ms", "eval_ms", "probe_sums_ms", "generate_ms", "group_norms_ms"):
            assert costs[key] > 0, key
        assert costs["lora_rank_ms"] > 0  # both carry a LoRA adapter
        assert costs["probe_sums_ms"] < costs["eval_ms"]
        probes = r["probes"]
        assert probes[0]["step"] == 10
        assert all(p["step"] % 10 == 0 for p in probes)
        for before, p in itertools.pairwise(probes):  # due once training pays for it
            cost = before["probe_ms"] / 1e3
            assert p["probe_s_before"] + cost <= 0.5 * p["train_s_before"]
            assert cost <= 0.5 * (p["train_s_before"] - before["train_s_before"])
        assert sum(p["probe_ms"] for p in probes) / 1e3 == pytest.approx(r["probe_s"])
        assert r["overhead_mean"] == pytest.approx(r["probe_s"] / r["wall_s"])
        assert r["first_interval"] == probes[0]
        assert r["budget_held"] == (r["probe_s"] <= 0.5 * r["train_s"])
    assert dense["costs_ms"]["pathways_ms"] == 0.0 and moe["costs_ms"]["pathways_ms"] > 0
    table = capsys.readouterr().out
    assert "| MoE pathways | — | — |" in table
    for variant in VARIANTS:  # one loop row each
        assert table.count(f"| {variant} |") == 1
