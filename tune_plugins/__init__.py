"""Ray Tune adapters for grokschedule: scheduler, callbacks, console and MLflow output."""

from tune_plugins.callbacks import GrokCallback
from tune_plugins.reporter import GrokConsoleReporter
from tune_plugins.scheduler import GrokScheduler, MissingMetricError
from tune_plugins.tracking import GrokMLflowLoggerCallback

__all__ = [
    "GrokCallback",
    "GrokConsoleReporter",
    "GrokMLflowLoggerCallback",
    "GrokScheduler",
    "MissingMetricError",
]
