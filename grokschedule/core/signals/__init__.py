"""Online estimators over metric streams, with bounded memory per trial."""

from grokschedule.core.signals.trend import (
    FLAT,
    Trend,
    log_trend,
    pair_indices,
    robust_trend,
    theil_sen_slope,
)
from grokschedule.core.signals.window import MetricWindow

__all__ = [
    "FLAT",
    "MetricWindow",
    "Trend",
    "log_trend",
    "pair_indices",
    "robust_trend",
    "theil_sen_slope",
]
