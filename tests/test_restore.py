"""Kill the Tune driver mid-sweep, then ``Tuner.restore``: GrokScheduler must resume its state.

Without GrokCallback the scheduler would be unpickled as it was at the start (Ray #30838), see
the resumed trial's results as a brand-new trial, and re-judge it from a fresh warmup.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
from ray import tune

from grokschedule.bench.replay_trainable import replay_trainable

pytestmark = pytest.mark.slow
TESTS = Path(__file__).parent
CURVES = str(TESTS / "data" / "recorded_curves.json")


def _wait_for(predicate, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.5)


def test_scheduler_state_survives_driver_kill_and_restore(tmp_path: Path) -> None:
    experiment = tmp_path / "restore"
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1", "PYTHONPATH": str(TESTS)}
    driver = subprocess.Popen(
        [sys.executable, str(TESTS / "restore_driver.py"), str(tmp_path), CURVES],
        env=env,
        start_new_session=True,
    )
    try:
        # Kill once the trial is well into its plateau (memorized at step 150) and Tune has
        # written the scheduler's state with an experiment checkpoint.
        def plateau_saved() -> bool:
            states = list(experiment.glob("callback-states-*.pkl"))
            trials = list(experiment.glob("replay_trainable_*/progress.csv"))
            return bool(states) and any(len(t.read_text().splitlines()) > 12 for t in trials)

        _wait_for(plateau_saved, timeout_s=120)
        time.sleep(1.5)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()

    ray.init(
        address="local",
        num_cpus=1,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(TESTS)}},
    )
    try:
        assert tune.Tuner.can_restore(str(experiment))
        results = tune.Tuner.restore(
            str(experiment), trainable=replay_trainable, resume_unfinished=True
        ).fit()
    finally:
        ray.shutdown()
    (result,) = list(results)
    reason = result.metrics["scheduler/reason"]
    assert result.metrics["scheduler/phase"] == "stalled"
    # Memorization was observed before the kill, at step 150: the restored scheduler remembers it.
    assert "memorization at 150" in reason, reason
