"""Driver process for tests/test_restore.py: starts (or restores) a sweep that the test kills.

``restore_driver.py STORAGE CURVES [SCENARIO]`` starts one; ``restore_driver.py --restore
EXPERIMENT`` carries a killed one on, in a process the test can kill again.
"""

from __future__ import annotations

import sys

import ray
from ray import tune

from grokschedule.bench.replay_trainable import replay_trainable
from tune_plugins import GrokCallback, GrokScheduler

# lr is not read by the replay: it is there for a kick by restart to change (the trainable does
# not poll the control channel). "kick_extend": the grokker is kicked at step 600 (the change
# waits for the checkpoint at step 1000), then extended past max_t 1000 up to step 1400.
SCENARIOS = {
    "stall": (
        {"max_t": 3000},
        {"curve": "memorizer_p47_wd0", "delay_s": 0.15, "checkpoint_every": 3},
    ),
    "kick_extend": (
        {
            "max_t": 1000,
            "max_extension": 400,
            "patience_factor": 4.0,
            "min_patience": 200,
            "interventions": ["lr_multiply"],
        },
        {"curve": "grokker_p47_wd1", "delay_s": 0.3, "checkpoint_every": 10, "lr": 1e-3},
    ),
}


def build_tuner(storage: str, curve_file: str, scenario: str = "stall") -> tune.Tuner:
    options, params = SCENARIOS[scenario]
    scheduler = GrokScheduler(metric="val_acc", mode="max", **options)
    return tune.Tuner(
        replay_trainable,
        param_space={"curve_file": curve_file, **params},
        tune_config=tune.TuneConfig(scheduler=scheduler),
        run_config=tune.RunConfig(
            name="restore", storage_path=storage, callbacks=[GrokCallback(scheduler)], verbose=0
        ),
    )


def restore_tuner(experiment: str) -> tune.Tuner:
    return tune.Tuner.restore(experiment, trainable=replay_trainable, resume_unfinished=True)


if __name__ == "__main__":
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    if sys.argv[1] == "--restore":
        restore_tuner(sys.argv[2]).fit()
    else:
        build_tuner(*sys.argv[1:]).fit()
