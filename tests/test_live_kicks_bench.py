"""``grokschedule bench live-kicks``: the totals' arithmetic, the forgetting rule, and a tiny
sweep of both arms through real Ray Tune (local Ray, the built-in modular trainable)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grokschedule.bench.live_kicks import (
    KickRecord,
    Plan,
    RunRecord,
    forgetting_step,
    table,
    totals,
)
from grokschedule.core.kick_policy import KickConfig

KINDS = {kick.kind for kick in KickConfig().kicks}


def record(name: str, arm: str, grok: int | None, kicks: int = 0) -> RunRecord:
    kick = KickRecord("ortho_grad", 300, True, 300, "step 300: ortho_grad for 250 steps")
    return RunRecord(name, arm, f"t-{name}", 6000, grok, grok or 6000, "", [kick] * kicks)


def test_totals_count_never_at_the_budget_and_pair_runs_by_config() -> None:
    runs = {
        "a": {"adamw": record("a", "adamw", 2000), "kicked": record("a", "kicked", 500, 1)},
        "b": {"adamw": record("b", "adamw", None), "kicked": record("b", "kicked", 1500, 2)},
        "c": {"adamw": record("c", "adamw", 3000), "kicked": record("c", "kicked", None, 2)},
    }
    summary = totals(runs, {"adamw": 100.0, "kicked": 60.0})
    assert summary["grokked"] == {"adamw": 2, "kicked": 2}
    # AdamW 2000, 6000 (never), 3000 → 3000; kicked 500, 1500, 6000 (never) → 1500
    assert summary["median_steps_to_grok"] == {"adamw": 3000, "kicked": 1500}
    assert summary["median_ratio"] == 2.0
    assert summary["both_grok"] == 1 and summary["median_speedup_both_grok"] == 4.0
    assert summary["grok_only_with_kicks"] == 1 and summary["runs_lost"] == ["c"]
    assert summary["kicks"] == 5 and summary["as_many_grokked"] is True
    text = table(runs, summary)
    assert "| a | 2,000 | 500 | 4.00× | ortho_grad @ 300 |" in text
    assert "| b | never | 1,500 | ≥ 4.00× |" in text  # AdamW's never counted at 6,000
    assert "| kicks (defaults) | 2/3 | 1,500 | 1 | 1 | 5 | 0 | 0 | 60 |" in text


def test_forgetting_is_a_drop_that_does_not_come_back_within_500_steps() -> None:
    recovered = [(0, 0.2, 0), (100, 1.0, 0), (200, 0.7, 0), (400, 0.99, 0), (800, 0.7, 0)]
    assert forgetting_step(recovered[:4]) is None  # back near its best 200 steps later
    assert forgetting_step(recovered) == 800  # the last drop is not back by the end
    assert forgetting_step([(0, 0.4, 0), (50, 0.1, 0)]) is None  # best < 0.5: not forgetting


def test_bad_grid_values_fail_before_ray_starts() -> None:
    with pytest.raises(ValueError, match="p must be a prime"):
        Plan(ps=(60,)).configs()
    with pytest.raises(ValueError, match="twice"):
        Plan(seeds=(0, 0)).configs()


TINY = [
    "--ops", "add", "--p", "23", "--train-fractions", "0.8", "--weight-decays", "0", "1",
    "--seeds", "0", "--lr", "1e-2", "--steps", "500", "--eval-every", "25",
    "--embed-dim", "32", "--hidden-dim", "128",
]  # fmt: skip


@pytest.mark.slow
def test_a_tiny_live_sweep_reports_both_arms_of_every_run(
    local_ray: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Weight decay 1 groks within 500 steps under plain AdamW, weight decay 0 never does."""
    from grokschedule.bench.live_kicks import live_kicks_main

    assert live_kicks_main([*TINY, "--out-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    document = json.loads((tmp_path / "live_kicks.json").read_text())
    runs, summary = document["runs"], document["totals"]
    grokker, memorizer = (f"op=add,p=23,train_fraction=0.8,weight_decay={wd},seed=0" for wd in "10")
    assert list(runs) == [memorizer, grokker]
    adamw = runs[grokker]["adamw"]
    assert adamw["grok_step"] is not None and adamw["grok_step"] < 500
    assert adamw["last_step"] == adamw["grok_step"]  # stopped at the evaluation it grokked
    assert adamw["outcome"] == f"grokked at step {adamw['grok_step']}"
    never = runs[memorizer]["adamw"]
    assert never["grok_step"] is None and never["last_step"] == 500  # no never-grok stop
    for pair in runs.values():
        for arm, run in pair.items():
            steps = [step for step, _, _ in run["history"]]
            assert steps == list(range(25, run["last_step"] + 1, 25)), (arm, steps)
            assert run["error"] is None
    kicked = [k for pair in runs.values() for k in pair["kicked"]["kicks"]]
    assert all(k["kind"] in KINDS and k["text"].startswith(f"step {k['step']}:") for k in kicked)
    # A kick is applied between steps after the evaluation that ordered it, never before.
    assert all(k["applied_step"] is None or k["applied_step"] >= k["step"] for k in kicked)
    assert summary["grokked"]["adamw"] == 1 and summary["kicks"] == len(kicked)
    assert summary["wall_s"]["adamw"] > 0 and summary["wall_s"]["kicked"] > 0
    # The printed table holds the same numbers.
    assert f"| {grokker} | {adamw['grok_step']:,} |" in printed
    assert f"| {memorizer} | never |" in printed
    median = summary["median_steps_to_grok"]["adamw"]
    assert median == (adamw["grok_step"] + 500) / 2
    assert f"| AdamW | 1/2 | {median:,.0f} |" in printed
    assert (tmp_path / "mlflow.db").is_file()
