"""grokschedule: grokking-aware scheduling for Ray Tune.

The decision core (signals, phases, policy) is plain Python + numpy; Ray, DeepSpeed and MLflow
live in thin adapters (``tune_plugins``, ``grokschedule.runner``, ``grokschedule.tasks``).
"""

from grokschedule.phases import Observation, Phase, PhaseTracker, TrackerConfig
from grokschedule.policy import Decision, DecisionKind, GrokPolicy, PolicyConfig
from grokschedule.predictor import GrokPredictor, Prediction

__all__ = [
    "Decision",
    "DecisionKind",
    "GrokPolicy",
    "GrokPredictor",
    "Observation",
    "Phase",
    "PhaseTracker",
    "PolicyConfig",
    "Prediction",
    "TrackerConfig",
]
__version__ = "0.1.0"
