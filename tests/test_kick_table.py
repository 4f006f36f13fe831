"""The kick table: kicked copies of a run are that run until their kick, then really differ, and
the table counts what the kicks did (grokked only with it, lost, forgetting, rollbacks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from grokschedule.bench.bank_chunks import record_steps
from grokschedule.bench.bank_models import METRICS, ModelBatch
from grokschedule.bench.kick_table import (
    DEFAULTS,
    PLAIN,
    TABLE_KICKS,
    KickedAdamW,
    RunOutcome,
    TableKick,
    TablePreset,
    _tiny,
    judge_chunk,
    kicks_main,
    plan,
    summarize,
    train_kicked_chunk,
    worst_groups,
    would_roll_back,
)
from grokschedule.core.kicks import LR_MULTIPLY, SGD_SWITCH, Kick
from grokschedule.training.modular.task import ModularTask

torch.set_num_threads(1)


def test_tiny_table_runs_and_writes_every_run(tmp_path: Path, capsys) -> None:
    out = tmp_path / "kicks.json"
    assert kicks_main(["--tiny", "--no-bar", "--out", str(out)]) == 0
    table = json.loads(out.read_text())
    preset = _tiny()
    per_config = 1 + len(preset.kicks) * len(preset.ages)
    assert len(table["runs"]) == per_config
    kicked = [r for r in table["runs"] if r["kick"] != PLAIN]
    assert kicked and all(r["kick_step"] == r["memorized_step"] for r in kicked)  # age 1×
    assert {w["variant"] for w in table["worst"]} >= {PLAIN, DEFAULTS, "norm ×0.7 500 @1×"}
    # The defaults' row is the run of the kick KickConfig() picks first at weight decay 1.
    defaults = next(r for r in table["rows"] if r["group"] == "all" and r["variant"] == DEFAULTS)
    picked = next(
        r for r in table["rows"] if r["group"] == "all" and r["variant"] == "lr cycle ×10 400 @1×"
    )
    assert {k: v for k, v in defaults.items() if k != "variant"} == {
        k: v for k, v in picked.items() if k != "variant"
    }
    assert "Per kick, its worst group" in capsys.readouterr().out


def test_a_kicked_copy_is_the_plain_run_until_its_kick_then_differs() -> None:
    preset = _tiny()
    chunk = plan(preset)[0]
    curves = train_kicked_chunk(chunk, preset.steps, preset.record_every)
    steps = record_steps(preset.steps, preset.record_every)
    outcomes = judge_chunk(chunk, curves, steps)
    plain = next(j for j, row in enumerate(chunk.rows) if row["kick"] is None)
    for j, outcome in enumerate(outcomes):
        if outcome.kick == PLAIN:
            continue
        before = steps <= outcome.kick_step
        exact = [k for k, name in enumerate(METRICS) if name != "weight_norm"]
        np.testing.assert_array_equal(curves[j, before][:, exact], curves[plain, before][:, exact])
        # The norm's sum over a stacked tensor may round its last bit by the model's position.
        norm = METRICS.index("weight_norm")
        np.testing.assert_allclose(curves[j, before, norm], curves[plain, before, norm], rtol=1e-6)
        assert not np.allclose(curves[j, ~before], curves[plain, ~before])


def test_the_plain_slice_of_the_kicked_optimizer_is_batched_adamw_bit_for_bit() -> None:
    x, y, _, _ = ModularTask("add", 11, 0.5, 0).split()
    args = ("mlp", 11, 8, 16, [0, 0], [1.0, 1.0], "adamw", [1e-2] * 2, [1.0] * 2)
    reference, kicked = ModelBatch.create(*args), ModelBatch.create(*args)
    switch = TableKick("sgd", Kick(SGD_SWITCH, {"lr": 0.01}, 5))
    optimizer = KickedAdamW(kicked.params, [1e-2] * 2, [1.0] * 2, [None, switch])
    optimizer.start[1] = 3
    for step in range(10):
        reference.step(x, y)
        grads = kicked.loss_and_grads(x, y)[1]
        with torch.no_grad():
            optimizer.step_(kicked.params, grads, step)
        if step == 3:  # first SGD step: the switched model's Adam moments are set aside
            moments = {k: v[1].clone() for k, v in optimizer.exp_avg.items()}
        if step == 7:  # last SGD step: they are untouched
            for name, value in moments.items():
                assert torch.equal(optimizer.exp_avg[name][1], value)
    for name, param in reference.params.items():
        assert torch.equal(kicked.params[name][0], param[0]), name
        assert not torch.allclose(kicked.params[name][1], param[1]), name
    assert list(optimizer.adam_t) == [10, 5]  # AdamW's step count paused for the 5 SGD steps


def _outcome(config: int, kick: str, grok: int | None, forgot: bool = False) -> RunOutcome:
    return RunOutcome(config, "mlp add wd 1-3", kick, 1.0, 1.0, 100, 100, grok, forgot, None, 0.0)


def test_a_run_plain_adamw_groks_and_the_kicked_one_does_not_is_lost() -> None:
    outcomes = [
        _outcome(0, PLAIN, 1000),
        _outcome(0, "lr×3 300", None, forgot=True),  # lost, and it forgot
        _outcome(1, PLAIN, None),
        _outcome(1, "lr×3 300", 200),  # groks only with the kick
    ]
    rows = summarize(outcomes, budget=2000)
    kicked = next(r for r in rows if r["group"] != "all" and r["variant"] == "lr×3 300 @1×")
    assert kicked["lost"] == 1 and kicked["grok_only_with"] == 1 and kicked["forgetting"] == 1
    # Medians count a run that never groks at the budget: plain (1000, 2000), kicked (2000, 200).
    assert kicked["plain_median_steps"] == 1500 and kicked["median_steps"] == 1100
    worst = worst_groups(rows)
    assert worst[-1]["variant"] == "lr×3 300 @1×" and worst[-1]["lost"] == 1  # lost ranks last
    # Both plain runs memorized at 100: no kick after that can beat 1500 / 100 = 15×.
    assert kicked["ceiling"] == 15 and worst[-1]["worst_ceiling"] == 15


def test_the_rollback_kick_policy_would_order_is_found() -> None:
    steps = np.arange(25, 1001, 25)
    loss, acc = np.full(len(steps), 0.01), np.ones(len(steps))
    kick = Kick(LR_MULTIPLY, {"factor": 10.0}, 200)
    assert would_roll_back(steps, loss, acc, 100, kick) is None
    loss[steps > 100], acc[steps > 100] = 3.0, 0.1  # the kick breaks the fit for good
    assert would_roll_back(steps, loss, acc, 100, kick) == 325  # after the 200-step window


def test_bad_table_kicks_are_refused() -> None:
    with pytest.raises(ValueError, match="exactly one of kick, norm_factor"):
        TableKick("both", Kick(LR_MULTIPLY, {"factor": 2.0}), norm_factor=0.5)
    with pytest.raises(ValueError, match="full-batch"):
        TableKick("batch", Kick("batch_size", {"factor": 2}))
    with pytest.raises(ValueError, match="norm_factor must be > 0"):
        TableKick("norm", norm_factor=0.0)
    assert {k.kind for k in TABLE_KICKS} >= {LR_MULTIPLY, SGD_SWITCH, "norm_rescale"}
    assert isinstance(_tiny(), TablePreset)
