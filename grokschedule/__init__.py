"""grokschedule: grokking-aware scheduling for Ray Tune.

Layers, each importing only those below it (checked by import-linter in ``./dev test``):
``app`` (CLI, demo, sweep spec, runner) → ``adapters`` (everything that imports Ray) →
``training`` (torch, DeepSpeed) and ``tracking`` (MLflow) → ``core`` (numpy only). The names
below are the core's public API; ``tune_plugins`` is the import path of the Tune adapters.
"""

from grokschedule.core.contract import Observation
from grokschedule.core.decision import Cause, Decision, DecisionKind
from grokschedule.core.phases import Phase, PhaseConfig, PhaseDetector
from grokschedule.core.policy import GrokPolicy, PolicyConfig, TrialState
from grokschedule.core.predictor import GrokPredictor, Prediction

__all__ = [
    "Cause",
    "Decision",
    "DecisionKind",
    "GrokPolicy",
    "GrokPredictor",
    "Observation",
    "Phase",
    "PhaseConfig",
    "PhaseDetector",
    "PolicyConfig",
    "Prediction",
    "TrialState",
]
__version__ = "0.1.0"
