"""Kill the Tune driver mid-sweep, then ``Tuner.restore``: GrokScheduler must resume its state.

Without GrokCallback the scheduler would be unpickled as it was at the start (Ray #30838), see
the resumed trial's results as a brand-new trial, and re-judge it from a fresh warmup.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import ray
from ray import tune
from restore_driver import restore_tuner

from grokschedule.core.decision import DecisionKind

pytestmark = pytest.mark.slow
TESTS = Path(__file__).parent
CURVES = str(TESTS / "data" / "recorded_curves.json")


def _wait_for(predicate, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.5)


def kill_driver_when(*args: str, saved: Callable[[], bool], grace_s: float = 0.0) -> None:
    """Run ``restore_driver.py *args`` and SIGKILL it (its whole process group: Ray too)
    ``grace_s`` after ``saved()`` holds."""
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1", "PYTHONPATH": str(TESTS)}
    driver = subprocess.Popen(
        [sys.executable, str(TESTS / "restore_driver.py"), *args],
        env=env,
        start_new_session=True,
    )
    try:
        _wait_for(saved, timeout_s=120)
        time.sleep(grace_s)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()


@contextmanager
def local_ray() -> Iterator[None]:
    ray.init(
        address="local",
        num_cpus=1,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(TESTS)}},
    )
    try:
        yield
    finally:
        ray.shutdown()


def saved_scheduler(experiment: Path, since: float = 0.0) -> dict[str, Any] | None:
    """GrokScheduler's state in the newest experiment checkpoint written after ``since``
    (GrokCallback's entry in Tune's callback states), or None."""
    files = [p for p in experiment.glob("callback-states-*.pkl") if p.stat().st_mtime > since]
    if not files:
        return None
    newest = max(files, key=lambda p: p.stat().st_mtime)
    with open(newest, "rb") as file:
        return pickle.load(file)[0]["scheduler"]


def test_scheduler_state_survives_driver_kill_and_restore(tmp_path: Path) -> None:
    experiment = tmp_path / "restore"

    # Kill once the trial is well into its plateau (memorized at step 150) and Tune has
    # written the scheduler's state with an experiment checkpoint.
    def plateau_saved() -> bool:
        states = list(experiment.glob("callback-states-*.pkl"))
        trials = list(experiment.glob("replay_trainable_*/progress.csv"))
        return bool(states) and any(len(t.read_text().splitlines()) > 12 for t in trials)

    kill_driver_when(str(tmp_path), CURVES, saved=plateau_saved, grace_s=1.5)

    with local_ray():
        assert tune.Tuner.can_restore(str(experiment))
        results = restore_tuner(str(experiment)).fit()
    (result,) = list(results)
    reason = result.metrics["scheduler/reason"]
    assert result.metrics["scheduler/phase"] == "stalled"
    # Memorization was observed before the kill, at step 150: the restored scheduler remembers it.
    assert "memorization at 150" in reason, reason


def test_a_pending_kick_by_restart_and_an_extension_survive_driver_kills(tmp_path: Path) -> None:
    """Killed while a kick by restart waits for its checkpoint, restored and killed again inside
    the extension past max_t, restored again: the kick is applied once (lr ×3, never ×9 or
    lost) and the extension ends where it would have, at max_t + max_extension."""
    experiment = tmp_path / "restore"

    def state(since: float = 0.0) -> tuple[str, dict[str, Any]] | None:
        try:
            saved = saved_scheduler(experiment, since)
        except (OSError, EOFError, pickle.UnpicklingError):  # being replaced: read it next time
            return None
        if saved is None or not saved["restarts"]["trials"]:
            return None
        (trial_id,) = saved["restarts"]["trials"]
        return trial_id, saved

    def kick_pending() -> bool:
        found = state()
        return found is not None and found[1]["restarts"]["trials"][found[0]].pending is not None

    kill_driver_when(str(tmp_path), CURVES, "kick_extend", saved=kick_pending)
    restored_at = time.time()

    def extending() -> bool:
        found = state(since=restored_at)
        if found is None:
            return False
        decision = found[1]["policy"].last_decision(found[0])
        return decision is not None and decision.kind is DecisionKind.EXTEND

    kill_driver_when("--restore", str(experiment), saved=extending)

    with local_ray():
        (result,) = list(restore_tuner(str(experiment)).fit())
    trial_id, saved = state()
    log = saved["policy"].decision_log(trial_id)
    kicks = [d for d in log if d.kind is DecisionKind.KICK]
    assert [(d.step, d.command.id) for d in kicks] == [(600, 0)]
    restarts = saved["restarts"]["trials"][trial_id]
    (applied,) = restarts.in_force
    assert (applied.label, applied.until) == ("kick 0 (lr_multiply)", 1000 + 300)
    assert restarts.acks == {"control/acked_id": 0, "control/applied_step": 1000}
    # Its window ended at 1300; the undo waits for a checkpoint (at 1500) the stop comes before.
    assert restarts.pending.label == "end of the kick 0 (lr_multiply) window"
    assert result.config["lr"] == pytest.approx(3e-3)  # once: not 1e-3 (lost), not 9e-3 (twice)
    rows = [json.loads(line) for line in (Path(result.path) / "result.json").open()]
    lrs = {(row["step"] > 1000, round(row["config"]["lr"], 9)) for row in rows}
    assert lrs - {(False, 3e-3)} == {(False, 1e-3), (True, 3e-3)}  # step 1000 is the restart

    # The extension: each step past max_t judged once, and the stop at max_t + max_extension.
    extended = [d.step for d in log if d.kind is DecisionKind.EXTEND]
    assert extended == [1000, 1050, 1100, 1150, 1200, 1250, 1300, 1350]
    assert (log[-1].kind, log[-1].step) == (DecisionKind.STOP, 1400)
    assert "budget: reached extension in transition" in log[-1].reason
    assert result.metrics["step"] == 1400
