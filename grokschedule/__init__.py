"""grokschedule: grokking-aware scheduling for Ray Tune.

The decision core (signals, phases, policy) is plain Python + numpy; Ray, DeepSpeed and MLflow
live in thin adapters (``tune_plugins``, ``grokschedule.runner``, ``grokschedule.tasks``).
"""

from grokschedule.phases import Observation, Phase, PhaseTracker, TrackerConfig
from grokschedule.policy import Decision, DecisionKind, GrokPolicy, PolicyConfig

__all__ = [
    "Decision",
    "DecisionKind",
    "GrokPolicy",
    "Observation",
    "Phase",
    "PhaseTracker",
    "PolicyConfig",
    "TrackerConfig",
]
__version__ = "0.1.0"
