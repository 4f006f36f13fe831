"""The documented import path of grokschedule's Ray Tune adapters
(``from tune_plugins import GrokScheduler``); they live in ``grokschedule.adapters``."""

from grokschedule.adapters import (
    GrokCallback,
    GrokConsoleReporter,
    GrokMLflowLoggerCallback,
    GrokScheduler,
    MissingMetricError,
)

__all__ = [
    "GrokCallback",
    "GrokConsoleReporter",
    "GrokMLflowLoggerCallback",
    "GrokScheduler",
    "MissingMetricError",
]
