"""What a reviewer sees of a grokking-aware sweep in MLflow, and the report read back from it.

Plain MLflow and matplotlib, no Ray: ``SweepLogger`` writes a sweep (parent run, nested trial
runs, verdicts, decision timelines, plots) through a local journal that a background thread
delivers, so MLflow being away never stalls training and loses nothing; ``report_main`` is
``grokschedule report``. ``tune_plugins.GrokMLflowLoggerCallback`` drives the logger from Tune.
"""

from grokschedule.tracking.logger import SweepLogger
from grokschedule.tracking.report import SweepReport, render, report_main, sync
from grokschedule.tracking.views import mlflow_view, spool_view

__all__ = [
    "SweepLogger",
    "SweepReport",
    "mlflow_view",
    "render",
    "report_main",
    "spool_view",
    "sync",
]
