"""``grokschedule bench replay`` on a three-curve bank built from tests/data: the bank-mode replay
trainable reports the stored values, and recall/compute/false kills match the known grok steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, observations

from grokschedule.bench.bank import CONTRACT_NAMES, GRID_COLUMNS, METRICS, CurveBank
from grokschedule.bench.replay_bench import run_replay
from grokschedule.core.policy import DecisionKind, GrokPolicy, PolicyConfig

pytestmark = pytest.mark.slow
# Known from the recorded curves, every other point of the first 60 (steps 100, 200, ..., 3000:
# half the reports, half the Tune time), at threshold 0.95.
CURVES = {"grokker_p47_wd1": 1700, "memorizer_p47_wd0": None, "delayed_grokker_p47_small": 2400}
HORIZON, MAX_T = 3000, 2000


def write_bank(path: Path) -> CurveBank:
    """The CURVES as a bank file in generate_bank's layout (grid columns are placeholders)."""
    raw = json.loads((DATA / "recorded_curves.json").read_text())
    curves = [{k: v[1:60:2] for k, v in raw[name]["curve"].items()} for name in CURVES]
    arrays = {"step": np.array(curves[0]["step"])}
    for name in METRICS:
        arrays[f"metric/{name}"] = np.array([c[CONTRACT_NAMES[name]] for c in curves], "float32")
    for column in GRID_COLUMNS:
        arrays[f"grid/{column}"] = np.array(["add" if column == "op" else 0] * len(curves))
    np.savez(path, **arrays)
    return CurveBank.load(path)


def offline_stop_steps(bank: CurveBank) -> list[int]:
    """Where GrokPolicy, run without Ray on the same curves and budgets, stops each one."""
    config = PolicyConfig(metric="val_acc", mode="max", max_t=MAX_T, max_extension=HORIZON - MAX_T)
    policy, stops = GrokPolicy(config), []
    for i in range(len(bank)):
        curve = {name: values.tolist() for name, values in bank.curve(i).items()}
        for observation in observations(curve):
            if policy.observe(str(i), observation).kind is DecisionKind.STOP:
                break
        stops.append(int(observation.step))
    return stops


def test_replay_bench_scores_fifo_and_grok_against_known_grok_steps(tmp_path: Path) -> None:
    bank = write_bank(tmp_path / "bank.npz")
    assert [bank.grok_step(i) for i in range(len(bank))] == list(CURVES.values())
    report = run_replay(tmp_path / "bank.npz", ["fifo", "grok"], 0.95, None, 3, tmp_path / "runs")
    assert (report["horizon"], report["max_t"], report["max_extension"]) == (3000, 2000, 1000)
    fifo, grok = report["rows"]

    # FIFO + stop-at-grok pays each run to its grok step, or to the horizon.
    assert fifo["compute_steps"] == fifo["fifo_stop_steps"] == 1700 + 3000 + 2400
    assert fifo["compute_vs_fifo_stop"] == 1.0
    assert (fifo["grokkers"], fifo["found"], fifo["recall"]) == (2, 2, 1.0)
    assert fifo["false_kills"] == [] and fifo["found_past_max_t"] == [2]  # 2400 > max_t
    assert fifo["errors"] == grok["errors"] == 0

    # GrokScheduler through Tune stops each curve where the policy alone does.
    stops = offline_stop_steps(bank)
    found = [i for i, at in enumerate(CURVES.values()) if at is not None and stops[i] >= at]
    assert grok["compute_steps"] == sum(stops)
    assert grok["compute_vs_fifo_stop"] == sum(stops) / (1700 + 3000 + 2400)
    assert grok["found"] == len(found) and grok["recall"] == len(found) / 2
    assert grok["false_kills"] == [i for i in (0, 2) if i not in found]
    assert grok["found_past_max_t"] == [i for i in found if list(CURVES.values())[i] > MAX_T]
    assert set(grok["false_kill_reasons"]) == set(grok["false_kills"])

    # The bank-mode replay trainable reported every stored value of every point FIFO ran.
    for result_file in (tmp_path / "runs" / "replay-fifo").glob("*/result.json"):
        results = [json.loads(line) for line in result_file.read_text().splitlines()]
        curve = bank.curve(results[0]["config"]["index"])
        for k, result in enumerate(results):
            for name, values in curve.items():
                assert np.float32(result[name]) == values[k], (name, k)
