"""Ray adapters: the only layer that imports Ray. They turn Tune results into observations for the
core and carry its decisions out (Tune decisions, the control channel, restarts, trainables)."""

from grokschedule.adapters.callbacks import GrokCallback
from grokschedule.adapters.mlflow_callback import GrokMLflowLoggerCallback
from grokschedule.adapters.reporter import GrokConsoleReporter
from grokschedule.adapters.scheduler import GrokScheduler, MissingMetricError

__all__ = [
    "GrokCallback",
    "GrokConsoleReporter",
    "GrokMLflowLoggerCallback",
    "GrokScheduler",
    "MissingMetricError",
]
