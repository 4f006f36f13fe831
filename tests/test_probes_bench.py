"""``grokschedule bench probes --task lm`` on a tiny LM: its options, and the bench run end to
end (the schedule it measures is tested in ``test_probe_schedule.py``)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from grokschedule.bench.lm_probes import VARIANTS, LMProbeOptions


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
