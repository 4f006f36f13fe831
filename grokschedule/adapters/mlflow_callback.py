"""MLflow logging for a grokking-aware sweep: Tune callbacks mapped onto ``SweepLogger``.

One MLflow run per trial (config as params, tag ``trial_name``) as with Ray's
``MLflowLoggerCallback``, named by its searched parameters first (``wd=1 frac=0.6 p=47
(2b4c1_00003)``) so the runs table shows what tells the runs apart, nested under one parent run
per sweep, plus what Ray lacks: metrics against the trial's own step in one batch per result, the
scheduler's score and signals, phase and verdict tags, the decision timeline (JSON, Markdown,
HTML), curves and sweep overview plots, and the sweep report.

Why not subclass Ray's ``MLflowLoggerCallback`` (as this module did before): it calls MLflow
synchronously on Tune's event loop, so an unreachable server stalls every trial for MLflow's
retry budget (minutes per call), and when a run lookup fails it falls back to MLflow's fluent API,
which opens stray runs in the Default experiment. Here every record goes to a local journal first
and a background thread delivers it (``grokschedule.tracking.sender``); see the README section
"Reviewing runs in MLflow" for the fault behaviour.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from ray.tune.experiment import Trial
from ray.tune.logger import LoggerCallback
from ray.tune.search.sample import Categorical, Domain, Function
from ray.tune.utils import flatten_dict

from grokschedule.adapters.control_channel import CONTROL_KEY
from grokschedule.adapters.reporter import trial_label
from grokschedule.adapters.scheduler import GrokScheduler
from grokschedule.core.kick_policy import KickConfig
from grokschedule.core.labels import describe
from grokschedule.tracking.logger import SweepLogger, check_tracking_uri

UNFINISHED = (Trial.PENDING, Trial.RUNNING, Trial.PAUSED)


def numeric_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The loggable scalars of a Tune result (no config echo, strings or non-finite values)."""
    flat = flatten_dict(result, delimiter="/")
    return {
        key: float(value)
        for key, value in flat.items()
        if isinstance(value, int | float)
        and not isinstance(value, bool)
        and not key.startswith("config/")
        and math.isfinite(value)
    }


def describe_space(space: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A Tune param space as readable text per (flattened) key, e.g. ``grid_search([0.0, 1.0])``
    or ``loguniform (0.0001, 0.01)``, for the sweep run's params."""
    out: dict[str, str] = {}
    for key, value in space.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and "grid_search" in value:
            out[name] = f"grid_search({list(value['grid_search'])})"
        elif isinstance(value, Mapping):
            out.update(describe_space(value, f"{name}/"))
        elif isinstance(value, Categorical):
            out[name] = f"choice({value.categories})"
        elif isinstance(value, Function):
            out[name] = f"sample_from({getattr(value.func, '__name__', 'function')})"
        elif isinstance(value, Domain):
            sampler = value.get_sampler()
            quantum = getattr(sampler, "q", None)
            base = getattr(sampler, "sampler", sampler) if quantum is not None else sampler
            step = f" q={quantum}" if quantum is not None else ""
            out[name] = f"{str(base).lower()} {value.domain_str}{step}"
        else:
            out[name] = str(value)
    return out


def run_name(trial: Trial) -> str:
    """A trial's MLflow run name: its searched parameters, short and rounded
    (``wd=1 frac=0.6 p=47``), then its trial id, which the UI's narrow column may cut off."""
    label = describe(trial.evaluated_params)
    return f"{label} ({trial.trial_id})" if label else trial.trial_id


def _describe_kicks(kicks: KickConfig | None) -> str:
    if kicks is None:
        return "off"
    kinds = ", ".join(k.kind for k in kicks.kicks)
    return f"{kinds} (at most {kicks.max_kicks} per trial)"


class GrokMLflowLoggerCallback(LoggerCallback):
    """Log a GrokScheduler sweep to MLflow: a parent run per sweep, a nested run per trial.

    Args:
        scheduler: The sweep's GrokScheduler (decisions, phases and settings come from it).
        tracking_uri: MLflow tracking URI (default: ``mlflow.get_tracking_uri()``). Must not hold
            credentials: set ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (or
            ``MLFLOW_TRACKING_TOKEN``) in the driver's environment.
        experiment_name: MLflow experiment (created if missing).
        tags: Extra tags on every run of the sweep.
        search_space: The ``param_space`` given to the Tuner, shown on the sweep run.
        spool_dir: Where the local journal lives (default: ``mlflow_spool`` in the Tune
            experiment directory). Give a durable local path when the experiment storage is
            remote, so a driver restart finds it.
        close_timeout_s: At the end of the sweep, how long to wait for an unreachable MLflow
            before leaving the rest in the journal (``grokschedule report --sync`` sends it).
    """

    def __init__(
        self,
        scheduler: GrokScheduler,
        tracking_uri: str | None = None,
        *,
        experiment_name: str = "grokschedule",
        tags: Mapping[str, str] | None = None,
        search_space: Mapping[str, Any] | None = None,
        spool_dir: str | Path | None = None,
        close_timeout_s: float = 30.0,
    ) -> None:
        self.scheduler = scheduler
        self.tracking_uri = tracking_uri or mlflow.get_tracking_uri()
        check_tracking_uri(self.tracking_uri)
        self.experiment_name = experiment_name
        self.tags = dict(tags or {})
        self.search_space = describe_space(search_space or {})
        self.spool_dir = None if spool_dir is None else Path(spool_dir)
        self.close_timeout_s = close_timeout_s
        # Pickled with the Tuner, so Tuner.restore continues the same MLflow runs.
        self.sweep_id = uuid.uuid4().hex[:12]
        self._sweep: SweepLogger | None = None
        self._num_samples: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        # The journal's file handle and sender thread are rebuilt after unpickling.
        return {**self.__dict__, "_sweep": None}

    def setup(self, *args: Any, **info: Any) -> None:
        self._num_samples = info.get("total_num_samples")

    def log_trial_start(self, trial: Trial) -> None:
        config = {k: v for k, v in trial.config.items() if k != CONTROL_KEY}  # the sweep's key
        params = flatten_dict(config, delimiter="/")
        tags = {**self.tags, "trial_name": str(trial)}
        self._logger(trial).start_trial(trial.trial_id, run_name(trial), params, tags)

    def log_trial_result(self, iteration: int, trial: Trial, result: dict[str, Any]) -> None:
        step = result.get(self.scheduler.time_attr, result.get("training_iteration", 0))
        decision = self.scheduler.last_decision(trial.trial_id)
        self._logger(trial).log_result(
            trial.trial_id,
            float(step),
            numeric_metrics(result),
            decision,
        )

    def log_trial_end(self, trial: Trial, failed: bool = False) -> None:
        self._end(trial, failed)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        if self._sweep is None:
            return
        unfinished = [t for t in trials if t.status in UNFINISHED]
        for trial in trials:  # Tune ends no run for a trial left pending or running
            if self._sweep.is_open(trial.trial_id):
                killed = trial in unfinished
                self._end(trial, trial.status == Trial.ERROR, "KILLED" if killed else None)
        self._sweep.end_sweep("KILLED" if unfinished else "FINISHED")
        self._sweep = None

    def _end(self, trial: Trial, failed: bool, status: str | None = None) -> None:
        decisions = self.scheduler.decision_log(trial.trial_id)
        error = None
        if failed:
            raised = trial.get_error()
            error = str(raised).strip().splitlines()[-1] if raised else "trial raised an error"
        self._logger(trial).end_trial(trial.trial_id, trial_label(trial), decisions, error, status)

    def _logger(self, trial: Trial) -> SweepLogger:
        """The sweep's logger, opened at the first trial (the policy and the experiment
        directory are known by then) together with the sweep's parent run."""
        if self._sweep is None:
            policy = self.scheduler.policy
            assert policy is not None, "Tune sets the scheduler's metric before trials start"
            config = policy.config
            root = self.spool_dir or Path(trial.local_experiment_path) / "mlflow_spool"
            self._sweep = SweepLogger(
                root,
                self.tracking_uri,
                self.experiment_name,
                self.sweep_id,
                metric=config.metric,
                threshold=config.grok_threshold,
                max_t=config.max_t,
                max_extension=config.extension,
                close_timeout_s=self.close_timeout_s,
            )
            settings = {
                "mode": config.mode,
                "time_attr": self.scheduler.time_attr,
                "patience_factor": config.patience_factor,
                "min_patience": config.patience_floor,
                "stop_on_grok": config.stop_on_grok,
                "interventions": _describe_kicks(config.interventions),
                "num_samples": self._num_samples,
            }
            name = f"{self.experiment_name} sweep {self.sweep_id}"
            self._sweep.start_sweep(name, settings, self.search_space, self.tags)
        return self._sweep
