"""Online estimators over metric streams, with bounded memory per trial."""

from grokschedule.signals.trend import FLAT, Trend, log_trend, robust_trend
from grokschedule.signals.window import MetricWindow

__all__ = ["FLAT", "MetricWindow", "Trend", "log_trend", "robust_trend"]
