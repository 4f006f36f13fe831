"""Ray adapters: the only layer that imports Ray. They turn Tune results into observations for the
core and carry its decisions out (Tune decisions, the control channel, restarts, trainables).

The names below load on first use (PEP 562), not with the package: every Ray process that
unpickles something from ``grokschedule.adapters.*`` — a Tune trial actor, a Train controller and
its workers, the run reaper — imports this package first, and the driver-side classes would make
each of them load MLflow, matplotlib and Ray Tune for nothing (the package alone took ~3 s to
import on a 2-core machine, ~0.2 s now; see CHANGELOG).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from grokschedule.adapters.callbacks import GrokCallback
    from grokschedule.adapters.mlflow_callback import GrokMLflowLoggerCallback
    from grokschedule.adapters.reporter import GrokConsoleReporter
    from grokschedule.adapters.scheduler import GrokScheduler, MissingMetricError

# Each public name -> the submodule that defines it.
_LAZY = {
    "GrokCallback": "callbacks",
    "GrokConsoleReporter": "reporter",
    "GrokMLflowLoggerCallback": "mlflow_callback",
    "GrokScheduler": "scheduler",
    "MissingMetricError": "scheduler",
}

__all__ = [
    "GrokCallback",
    "GrokConsoleReporter",
    "GrokMLflowLoggerCallback",
    "GrokScheduler",
    "MissingMetricError",
]


def __getattr__(name: str) -> Any:
    """``from grokschedule.adapters import GrokScheduler`` imports ``adapters.scheduler`` then."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
