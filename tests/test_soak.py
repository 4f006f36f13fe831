"""``grokschedule bench soak`` in small: replay trials through real Tune, each trial's outcome
equal to an offline replay, nothing left reserved, no result lost or repeated; with kicks on, the
same decisions (KICK included) as an offline replay of the sweep, and under an MLflow server
killed mid-sweep every journal record in MLflow's store exactly once."""

from __future__ import annotations

import json
import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from test_replay_bench import write_bank

from grokschedule.bench.bank import CurveBank
from grokschedule.bench.replay_bench import default_max_t
from grokschedule.bench.replay_trainable import ReplayAcks
from grokschedule.bench.soak import (
    Seen,
    bank_from_curves,
    compare_sweep,
    decision_key,
    offline_sweep,
    soak_main,
)
from grokschedule.bench.soak_mlflow import LocalMlflowServer, verify_delivery
from grokschedule.core.contract import Observation
from grokschedule.core.decision import DecisionKind
from grokschedule.core.kick_policy import KickConfig
from grokschedule.core.policy import GrokPolicy, PolicyConfig

DATA = Path(__file__).parent / "data"


@pytest.mark.slow
def test_twenty_trials_match_their_offline_replay(tmp_path: Path, capsys) -> None:
    write_bank(tmp_path / "bank.npz")  # grokker (1700), memorizer, delayed grokker (2400)
    out = tmp_path / "soak.json"
    argv = ["--bank", str(tmp_path / "bank.npz"), "--trials", "20", "--rows", "3"]
    argv += ["--horizon", "2000", "--max-concurrent", "4", "--no-interventions"]
    argv += ["--storage", str(tmp_path / "runs"), "--out", str(out)]
    assert soak_main(argv) == 0
    assert capsys.readouterr().out.splitlines()[-3].startswith("| trials | results | errors |")
    report = json.loads(out.read_text())
    assert (report["trials_seen"], report["errors"], report["mismatches"]) == (20, 0, [])
    assert (report["horizon"], report["max_t"]) == (2000, 1300)
    assert report["grokked"] == 7  # rows 0, 3, 6, ... are the grokker: 7 of 20 trials
    assert report["cpu_left_reserved"] == 0
    assert "KICK" not in report["decisions"] and report["mlflow"] is None


@pytest.mark.slow
def test_kicks_and_an_mlflow_outage_lose_and_repeat_nothing(tmp_path: Path) -> None:
    """6 trials with kicks on, the MLflow server killed for 3 s after the first trial ends."""
    out = tmp_path / "soak.json"
    argv = ["--curves", str(DATA / "recorded_curves.json"), "--trials", "6", "--rows", "5"]
    argv += ["--horizon", "3000", "--max-concurrent", "6"]
    argv += ["--mlflow-outage-s", "3", "--mlflow-outage-at", "0.1"]
    argv += ["--storage", str(tmp_path / "runs"), "--out", str(out)]
    assert soak_main(argv) == 0
    report = json.loads(out.read_text())
    assert (report["trials_seen"], report["errors"], report["mismatches"]) == (6, 0, [])
    assert report["decisions"]["KICK"] >= 2 and report["repeated"] == 0
    assert sum(report["ack_delay_results"].values()) >= 2  # acknowledged through the channel
    assert report["commands_unacked_at_end"] <= 1  # a kick on a trial's last result only
    assert report["on_trial_result_p99_ms"] > 0 and report["cpu_left_reserved"] == 0
    mlflow = report["mlflow"]
    assert mlflow["problems"] == []
    assert (mlflow["runs"], mlflow["trial_runs"], mlflow["decision_files"]) == (7, 6, 6)
    assert mlflow["down_s"] >= 3 and mlflow["trials_finished_at_kill"] >= 1
    assert mlflow["caught_up_after_s"] is not None and mlflow["backlog_kib_at_restart"] > 0

    # The check finds what a lost, a changed and a missing record would leave.
    store = tmp_path / "tampered"
    shutil.copytree(mlflow["store"], store)
    spool = next((store / "spool").iterdir())
    with sqlite3.connect(store / "mlflow.db") as db:
        db.execute("DELETE FROM metrics WHERE rowid = (SELECT min(rowid) FROM metrics)")
        db.execute(
            "UPDATE tags SET value = 'x' WHERE rowid = (SELECT min(rowid) FROM tags "
            "WHERE key = 'grok.verdict')"
        )
    next((store / "artifacts").rglob("decisions.json")).unlink()
    logs = _decision_logs(spool)
    problems = verify_delivery(LocalMlflowServer(store), spool, "soak", logs)["problems"]
    assert len(problems) == 3, problems
    assert sum("metric rows differ: 0 extra" in p and "1 missing" in p for p in problems) == 1
    assert sum("grok.verdict" in p for p in problems) == 1
    assert sum("artifact grok/decisions.json missing" in p for p in problems) == 1


def _decision_logs(spool: Path) -> dict[str, list[Any]]:
    """Each trial's decision log as the journal kept it (its decisions.json file)."""
    return {
        path.parent.parent.name: json.loads(path.read_text())
        for path in (spool / "files").glob("*/grok/decisions.json")
    }


def _live_sweep(bank: CurveBank, trials: int, late: int) -> tuple[PolicyConfig, list[Seen]]:
    """A sweep run the way the soak's live side runs it, round-robin over ``trials`` trials of
    ``bank``'s rows, each command acknowledged at the next result, or at the one after for
    every ``late``-th command (a poll that came too late)."""
    end = int(bank.steps[-1])
    max_t = default_max_t(bank.steps)
    config = PolicyConfig(
        metric="val_acc",
        mode="max",
        max_t=max_t,
        max_extension=end - max_t,
        interventions=KickConfig(),
    )
    policy, seen = GrokPolicy(config), []
    acks = {f"t{i}": ReplayAcks() for i in range(trials)}
    due: dict[str, list[tuple[int, Any]]] = {trial: [] for trial in acks}
    done: set[str] = set()
    commands = 0
    for k in range(len(bank.steps)):
        for i, trial in enumerate(acks):
            curve = bank.curve(i % len(bank))
            if trial in done or k >= len(curve["step"]):
                continue
            reached = int(curve["step"][k - 1]) if k else -1
            for at, command in [item for item in due[trial] if item[0] <= k]:
                acks[trial].apply(command, reached)
                due[trial].remove((at, command))
            metrics = {name: values[k].item() for name, values in curve.items()}
            control = acks[trial].metrics(int(curve["step"][k]))
            decision = policy.observe(trial, Observation.from_result(metrics | control))
            state = acks[trial].state
            seen.append(
                Seen(
                    trial,
                    i % len(bank),
                    float(curve["step"][k]),
                    (state.acked_id, state.applied_step),
                    decision_key(decision),
                )
            )
            if decision.command is not None:
                commands += 1
                due[trial].append((k + (2 if commands % late == 0 else 1), decision.command))
            if decision.kind is DecisionKind.STOP:
                done.add(trial)
    return config, seen


def test_offline_sweep_replay_matches_kicks_and_catches_lost_repeated_and_changed(
    tmp_path: Path,
) -> None:
    bank = CurveBank.load(bank_from_curves(DATA / "recorded_curves.json", tmp_path / "b.npz"))
    config, seen = _live_sweep(bank, trials=10, late=3)
    kicks = [s for s in seen if s.decision is not None and s.decision[0] == "KICK"]
    assert len(kicks) >= 3  # several kicks, one of every three acknowledged a result late
    counts = {s.trial_id: sum(1 for x in seen if x.trial_id == s.trial_id) for s in seen}
    offline = offline_sweep(config, bank, seen)
    assert compare_sweep(seen, offline, counts) == []
    assert offline["ack_delays"].get(2, 0) >= 1 and offline["ack_delays"][1] >= 1

    def problems(changed: list[Seen]) -> list[str]:
        found = compare_sweep(changed, offline_sweep(config, bank, changed), counts)
        return [problem for trial in found for problem in trial["problems"]]

    kick = seen.index(kicks[0])
    lost = seen[:kick] + seen[kick + 1 :]  # the result a kick was decided on never came
    assert any("the curve's is" in p for p in problems(lost))
    again = replace(seen[kick], decision=None)  # the same step once more: not shown the policy
    assert "step" in problems([*seen[: kick + 1], again, *seen[kick + 1 :]])[0]
    kind, step, phase, command = kicks[0].decision
    other = {**command, "kick": {**command["kick"], "kind": "grokfast"}}
    changed = [
        *seen[:kick],
        replace(seen[kick], decision=(kind, step, phase, other)),
        *seen[kick + 1 :],
    ]
    assert any("decision" in p and "differs" in p for p in problems(changed))
    trial = seen[kick].trial_id
    after = next(i for i, s in enumerate(seen) if s.trial_id == trial and s.acked[0] >= 0)
    back = replace(seen[after], acked=(-1, -1))  # the acknowledgement lost again
    assert any(
        "acknowledgements differ" in p for p in problems([*seen[:after], back, *seen[after + 1 :]])
    )
