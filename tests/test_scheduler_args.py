"""GrokScheduler's arguments: validated before any trial runs, keyword-only after mode."""

import pytest

from tune_plugins import GrokScheduler


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mode": "maximum"}, "mode"),
        ({"max_t": 0}, "max_t"),
        ({"max_t": -100}, "max_t"),
        ({"grok_threshold": 1.2}, "grok_threshold"),
        ({"metric": "val_acc", "grok_threshold": 0.0}, "grok_threshold"),
        ({"time_attr": ""}, "time_attr"),
        ({"patience_factor": -1}, "patience_factor"),
    ],
)
def test_invalid_arguments_raise_before_any_trial(kwargs, field) -> None:
    with pytest.raises(ValueError, match=field):
        GrokScheduler(**{"metric": "val_acc", "mode": "max", **kwargs})


def test_metric_and_mode_may_come_from_tune_config() -> None:
    scheduler = GrokScheduler(max_t=100)
    assert scheduler.set_search_properties("val_acc", "max")
    assert scheduler.policy is not None and scheduler.policy.config.metric == "val_acc"
    assert not GrokScheduler(metric="a", mode="max").set_search_properties("b", None)


def test_required_metrics_follow_the_configured_names() -> None:
    scheduler = GrokScheduler(metric="val_acc", mode="max", val_loss="eval_loss", train_acc=None)
    assert scheduler.required_metrics == [
        "step",
        "val_acc",
        "train_loss",
        "eval_loss",
        "weight_norm",
    ]


def test_everything_after_mode_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        GrokScheduler("val_acc", "max", "step")
    scheduler = GrokScheduler("val_acc", "max", time_attr="step", max_t=20_000, grok_threshold=0.95)
    assert scheduler.policy is not None and scheduler.policy.config.grok_threshold == 0.95
