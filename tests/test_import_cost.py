"""What each Ray process of a DeepSpeed trial imports from grokschedule, and what it must not load.

A trial starts four Python processes that import grokschedule by unpickling what Ray hands them:
the Tune trial actor (the trainable), the Train controller (the run's callbacks and its
``train_loop_config``), the run reaper (its class) and each Train worker (the loop, the
callbacks, the loop config). On a 2-core machine every second of imports in them is a second of
the trial's start (see CHANGELOG). Each module here is imported in a fresh interpreter, as those
processes do, and may not bring what only the driver or the workers need.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DRIVER_ONLY = ["mlflow", "matplotlib", "grokschedule.tracking", "grokschedule.adapters.scheduler"]
# DeepSpeed imports MLflow itself (deepspeed.autotuning), so only what has no DeepSpeed is held
# to it; the workers need DeepSpeed and are held to the rest.
WORKER_ONLY = ["deepspeed", "transformers", "peft", "grokschedule.training.deepspeed.engine"]

CASES = {
    # the package itself: every process above imports it first
    "grokschedule.adapters": [*DRIVER_ONLY, *WORKER_ONLY, "ray.tune", "torch"],
    # the controller and the workers unpickle ChannelCommands from train_loop_config
    "grokschedule.adapters.trainables.commands": [*DRIVER_ONLY, *WORKER_ONLY, "torch"],
    # the controller and the workers unpickle ReleaseOnStop
    "grokschedule.adapters.trainables.train_guard": [*DRIVER_ONLY, *WORKER_ONLY, "ray.tune"],
    # the run reaper's own process: Ray's core and nothing of Ray Train
    "grokschedule.adapters.trainables.reaper": [
        *DRIVER_ONLY,
        *WORKER_ONLY,
        "ray.tune",
        "ray.train",
        "pandas",
    ],
    # the trial actor: the Tune function, which builds the TorchTrainer
    "grokschedule.adapters.trainables.deepspeed": [*DRIVER_ONLY, *WORKER_ONLY],
    # the workers: the loop, which needs DeepSpeed
    "grokschedule.adapters.trainables.train_loop": [m for m in DRIVER_ONLY if m != "mlflow"],
}


def loaded(module: str, watched: list[str]) -> list[str]:
    """The ``watched`` modules that ``import module`` loads in a fresh interpreter."""
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        f"print(json.dumps([m for m in {watched!r} if m in sys.modules]))\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=180
    )
    assert done.returncode == 0, done.stderr
    found: list[str] = json.loads(done.stdout.splitlines()[-1])
    return found


@pytest.mark.parametrize("module", sorted(CASES))
def test_trial_processes_do_not_import_what_they_do_not_use(module: str) -> None:
    assert loaded(module, CASES[module]) == []


def test_the_lazy_names_still_import_from_the_package() -> None:
    import grokschedule.adapters as adapters
    from grokschedule.adapters.scheduler import GrokScheduler
    from tune_plugins import GrokScheduler as Documented

    assert adapters.GrokScheduler is GrokScheduler is Documented
    for name in adapters.__all__:
        assert getattr(adapters, name).__name__ == name
        assert name in dir(adapters)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        adapters.Nope  # noqa: B018
