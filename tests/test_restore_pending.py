"""The Tune driver SIGKILLed inside an EXTEND while a kick by restart waits, then
``Tuner.restore`` (the sweep is in tests/restore_pending_driver.py).

One run serves both tests: the driver is killed once the experiment checkpoint on disk holds
the trial past ``max_t`` 1000 in its extension and its kick (decided at step 600) still waiting
for the run's first checkpoint (step 1250); it is restored here and run to its end. The kill
comes on that event (the driver stops itself right after such a checkpoint reached the storage
path), never after a sleep. The trial has no checkpoint at the kill, so the restored one starts
from step 50 again and repeats every step up to the kill.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import ray
from ray import tune
from restore_pending_driver import LR, MAX_EXTENSION, MAX_T

from grokschedule.bench.replay_trainable import replay_trainable
from grokschedule.core.decision import DecisionKind

pytestmark = pytest.mark.slow
TESTS = Path(__file__).parent
CURVES = str(TESTS / "data" / "recorded_curves.json")
# The driver and the workers import this checkout's grokschedule and the driver module.
PYTHONPATH = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
KICKED_AT, FIRST_CHECKPOINT, WINDOW = 600, 1250, 300


def _saved_scheduler(experiment: Path) -> dict[str, Any]:
    """GrokScheduler's state (GrokCallback's entry) in the newest driver session's experiment
    checkpoint: the names carry the session's start; a restore copies older ones back anew."""
    newest = max(experiment.glob("callback-states-*.pkl"), key=lambda p: p.name)
    with open(newest, "rb") as file:
        return pickle.load(file)[0]["scheduler"]


@pytest.fixture(scope="module")
def killed_and_restored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("restore_pending")
    experiment, marker = root / "restore", root / "stopped"
    env = {
        **os.environ,
        "TUNE_GLOBAL_CHECKPOINT_S": "0.25",
        "PYTHONPATH": PYTHONPATH,
        "GROK_KILL_MARKER": str(marker),
    }
    driver = subprocess.Popen(
        [sys.executable, str(TESTS / "restore_pending_driver.py"), str(root), CURVES],
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            if driver.poll() is not None:
                raise AssertionError(f"the driver ended (rc {driver.returncode}) before the kill")
            if time.monotonic() > deadline:
                raise TimeoutError("the driver did not reach the extension with the kick waiting")
            time.sleep(0.2)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and its Ray cluster
        driver.wait()
    at_kill = _saved_scheduler(experiment)

    ray.init(
        address="local",
        num_cpus=1,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": PYTHONPATH}},
    )
    try:
        tuner = tune.Tuner.restore(
            str(experiment), trainable=replay_trainable, resume_unfinished=True
        )
        (result,) = list(tuner.fit())
    finally:
        ray.shutdown()
    (trial_id,) = at_kill["restarts"]["trials"]
    return {
        "trial_id": trial_id,
        "at_kill": at_kill,
        "final": _saved_scheduler(experiment),
        "result": result,
        "rows": [json.loads(line) for line in (Path(result.path) / "result.json").open()],
    }


def test_a_kick_by_restart_waiting_at_the_kill_is_applied_once_after_restore(
    killed_and_restored: dict[str, Any],
) -> None:
    trial_id = killed_and_restored["trial_id"]
    # At the kill the kick waited: not applied, not acknowledged.
    waiting = killed_and_restored["at_kill"]["restarts"]["trials"][trial_id]
    assert waiting.pending.label == "kick 0 (lr_multiply)"
    assert waiting.pending.change == {"lr": pytest.approx(3 * LR)}
    assert (waiting.in_force, waiting.acks) == ([], {})

    final = killed_and_restored["final"]
    log = final["policy"].decision_log(trial_id)
    kicks = [(d.step, d.command.id) for d in log if d.kind is DecisionKind.KICK]
    assert kicks == [(KICKED_AT, 0)]  # decided once: not again on the repeated step 600
    restarts = final["restarts"]["trials"][trial_id]
    (applied,) = restarts.in_force  # carried out once, at the first checkpoint after the kill
    assert (applied.label, applied.command_id) == ("kick 0 (lr_multiply)", 0)
    assert applied.until == FIRST_CHECKPOINT + WINDOW and restarts.pending is None
    assert restarts.acks == {"control/acked_id": 0, "control/applied_step": FIRST_CHECKPOINT}
    kick_state = final["policy"].kicks.trial(trial_id)
    assert [(i, step) for i, _, step in kick_state.applied] == [(0, FIRST_CHECKPOINT)]
    assert (kick_state.used, kick_state.pending) == (1, {})

    # Every step up to the restart ran under lr 1e-3, every step after it under 3e-3, in the
    # killed driver and after the restore alike: the kick once, not lost (1e-3) nor twice (9e-3).
    result = killed_and_restored["result"]
    assert result.config["lr"] == pytest.approx(3 * LR)
    lrs = {
        (row["step"] > FIRST_CHECKPOINT, round(row["config"]["lr"], 9))
        for row in killed_and_restored["rows"]
        if row["step"] != FIRST_CHECKPOINT  # reported under 1e-3, logged once the restart set it
    }
    assert lrs == {(False, LR), (True, round(3 * LR, 9))}, lrs


def test_an_extension_under_way_at_the_kill_ends_at_max_t_plus_max_extension(
    killed_and_restored: dict[str, Any],
) -> None:
    trial_id = killed_and_restored["trial_id"]
    extending = killed_and_restored["at_kill"]["policy"].last_decision(trial_id)
    assert extending.kind is DecisionKind.EXTEND
    killed_at = extending.step
    assert MAX_T < killed_at < FIRST_CHECKPOINT
    assert f"(extension {killed_at - MAX_T:.0f}/{MAX_EXTENSION})" in extending.reason

    final = killed_and_restored["final"]["policy"]
    log = final.decision_log(trial_id)
    # One EXTEND from max_t on (the log keeps each change of decision, not every step), then the
    # stop at the end of that same extension: not at max_t after the restore, nor 400 further.
    assert [(d.kind, d.step) for d in log if d.step >= MAX_T] == [
        (DecisionKind.EXTEND, MAX_T),
        (DecisionKind.STOP, MAX_T + MAX_EXTENSION),
    ]
    end = f"the end of the extension (max_t {MAX_T:.0f} + {MAX_EXTENSION:.0f})"
    assert log[-1].reason.startswith(f"budget: reached {end} in transition")
    result = killed_and_restored["result"]
    assert result.metrics["step"] == MAX_T + MAX_EXTENSION
    assert result.metrics["scheduler/decision"] == "STOP"
    rows = killed_and_restored["rows"]
    assert max(row["step"] for row in rows) == MAX_T + MAX_EXTENSION
    # Every step judged once, 50 … 1400, though the restored trial repeated 50 … the kill.
    assert final.trial(trial_id).detector.results == (MAX_T + MAX_EXTENSION) / 50
    # The steps judged after the restore count the extension on from max_t, not from the kill.
    after = {row["step"]: row["scheduler/reason"] for row in rows if row["step"] > killed_at}
    assert sorted(after) == list(range(int(killed_at) + 50, MAX_T + MAX_EXTENSION + 1, 50))
    for step, reason in after.items():
        if step < MAX_T + MAX_EXTENSION:
            assert f"(extension {step - MAX_T}/{MAX_EXTENSION})" in reason, (step, reason)
