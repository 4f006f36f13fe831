"""Driver process for tests/test_restore.py: starts a sweep that the test kills mid-way."""

from __future__ import annotations

import sys

import ray
from ray import tune

from grokschedule.bench.replay_trainable import replay_trainable
from tune_plugins import GrokCallback, GrokScheduler


def build_tuner(storage: str, curve_file: str) -> tune.Tuner:
    scheduler = GrokScheduler(metric="val_acc", mode="max", max_t=3000)
    return tune.Tuner(
        replay_trainable,
        param_space={
            "curve_file": curve_file,
            "curve": "memorizer_p47_wd0",
            "delay_s": 0.15,
            "checkpoint_every": 3,
        },
        tune_config=tune.TuneConfig(scheduler=scheduler),
        run_config=tune.RunConfig(
            name="restore", storage_path=storage, callbacks=[GrokCallback(scheduler)], verbose=0
        ),
    )


if __name__ == "__main__":
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    build_tuner(sys.argv[1], sys.argv[2]).fit()
