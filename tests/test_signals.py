import numpy as np
import pytest

from grokschedule.core.signals import MetricWindow, log_trend, robust_trend


def test_window_keeps_the_latest_samples_in_order() -> None:
    window = MetricWindow(capacity=4)
    for t in range(10):
        window.append(t, t * 10.0)
    assert len(window) == 4
    assert window.times().tolist() == [6, 7, 8, 9]
    assert window.values(last=2).tolist() == [80.0, 90.0]
    assert window.latest == 90.0


def test_window_rejects_a_capacity_that_cannot_hold_a_trend() -> None:
    with pytest.raises(ValueError, match="capacity"):
        MetricWindow(capacity=1)


def test_robust_trend_ignores_a_single_spike() -> None:
    t = np.arange(10.0)
    y = 2.0 * t
    y[5] = 1000.0  # an Adam slingshot or a bad batch
    trend = robust_trend(t, y)
    assert trend.slope == pytest.approx(2.0)
    assert trend.change == pytest.approx(18.0)
    assert trend.tau > 0.8
    assert trend.rising(min_change=10)
    assert not trend.falling(min_change=0)


def test_log_trend_reports_relative_change() -> None:
    t = np.linspace(0, 900, 10)
    y = 10 * np.exp(-t / 900)  # falls by a factor e over the window
    trend = log_trend(t, y)
    assert trend.change == pytest.approx(-1.0)
    assert trend.falling(min_change=0.5)


def test_too_few_points_give_no_trend() -> None:
    assert robust_trend(np.array([0.0, 1.0]), np.array([0.0, 5.0])).change == 0.0
