"""What the Hugging Face and Lightning callback tests share: the fast policy rules, a kick
configuration for the resume tests, and what a callback's run holds at a given moment."""

from __future__ import annotations

from typing import Any

from grokschedule.core.kicks import Kick

# Small rules, so decisions come within ~100 steps (as tests/test_policy.py does).
FAST = {"patience_factor": 1.0, "min_patience": 0, "judge_after": 1.0, "predictor": False}
# One 30-step lr kick, with a budget of one: a kick used and in force across a checkpoint.
RESUMABLE = {
    **FAST,
    "interventions": {
        "kicks": [Kick("lr_multiply", {"factor": 3.0}, duration_steps=30)],
        "max_kicks": 1,
        "cooldown": 0,
    },
}


def held(callback: Any) -> dict[str, Any]:
    """What a callback's run holds now: the memorization step, the kicks used and in force,
    the decision log."""
    run = callback.run
    return {
        "memorized_step": run.policy.trial("run").detector.memorized_step,
        "kicks_used": run.policy.kicks.trial("run").used,
        "decisions": run.decisions,
        "kicks_in_force": [a.kick for a in run.kicks.active],
    }


# A value other than the default for every argument a callback shares with GrokScheduler.
CHOSEN: dict[str, Any] = {
    "metric": "target",
    "mode": "min",
    "max_t": 500,
    "grok_threshold": 0.1,
    "max_extension": 100,
    "patience_factor": 3.0,
    "min_patience": 50,
    "stop_on_grok": False,
    "train_loss": "t_loss",
    "train_acc": "t_acc",
    "val_loss": "v_loss",
    "weight_norm": "w_norm",
    "phase_options": {"warmup_results": 3},
    "interventions": ["lr_multiply"],
    "predictor": False,
    "stop_below": 0.1,
    "keep_above": 0.6,
    "judge_after": 2.0,
    "adaptive": True,
}


def assert_settings_are_schedulers(callback_class: Any) -> None:
    """A callback hands every argument it shares with GrokScheduler on, and refuses an empty
    metric name."""
    import pytest

    from grokschedule.adapters.scheduler import GrokScheduler
    from grokschedule.core.contract import MetricNames

    settings = callback_class(**CHOSEN).settings
    scheduler = GrokScheduler(**CHOSEN)
    assert settings.config(500) == scheduler.policy.config
    assert settings.names == MetricNames("step", "target", "t_loss", "t_acc", "v_loss", "w_norm")
    with pytest.raises(ValueError, match="metric must be a non-empty metric name"):
        callback_class(metric="")
