"""The metric contract: every name a trainable reports and the scheduler reads, and the
``Observation`` a reported result becomes for the core.

A trainable reports the time attribute, the target metric and the contract scalars (their names
are configurable, ``MetricNames``), plus optional worker-side signals under ``grok/`` and, if it
polls the control channel, acknowledgements under ``control/``. The scheduler adds its own
annotations under ``scheduler/`` (console, MLflow).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SIGNAL_PREFIX = "grok/"
CONTROL_PREFIX = "control/"
SCHEDULER_PREFIX = "scheduler/"

# Worker-side signals the core reads when present.
VAL_CORRECT_PROB = "grok/val_correct_prob"  # mean softmax probability of the correct class
VAL_CONFIDENCE = "grok/val_confidence"  # mean max softmax on validation
ZERO_LOSS_SHARE = "grok/zero_loss_share"  # share of training samples at float32 loss 0

# Probe-set signals of a language model, one set per name (``"val"``: the held-out split,
# ``"probe"``: the harder one beyond the training distribution): ``probe_metric(set, stat)``.
PROBE_PREFIX = "grok/probe/"
HELD_OUT_SET = "val"  # its exact-match is a validation accuracy (whole answers right)
PROBE_LOSS = "loss"  # mean token loss over the answer tokens
PROBE_PPL = "ppl"  # exp(PROBE_LOSS)
PROBE_EXACT_MATCH = "exact_match"  # share of examples with every answer token right (greedy)
PROBE_CONF_CORRECT = "conf_correct"  # mean max-softmax over the answer, examples answered right
PROBE_CONF_WRONG = "conf_wrong"  # the same on examples answered wrong (confident + wrong: overfit)
PROBE_DISTINCT_1 = "distinct_1"  # distinct unigrams / all unigrams of greedy generations
PROBE_DISTINCT_2 = "distinct_2"  # the same for bigrams
PROBE_STATS = (
    PROBE_LOSS,
    PROBE_PPL,
    PROBE_EXACT_MATCH,
    PROBE_CONF_CORRECT,
    PROBE_CONF_WRONG,
    PROBE_DISTINCT_1,
    PROBE_DISTINCT_2,
)

# The DeepSpeed trainer's model probes (on the probe schedule): weight norm per layer group
# (``group_norm_metric``), the LoRA updates' effective rank, and MoE routing pathways.
GROUP_NORM_PREFIX = "grok/group_norm/"
LAYER_GROUPS = ("embeddings", "attention", "mlp", "router", "norm", "lora", "head", "other")
LORA_EFF_RANK_MEAN = "grok/lora_eff_rank_mean"  # effective rank of B @ A, mean over layers
LORA_EFF_RANK_MIN = "grok/lora_eff_rank_min"
MOE_PATHWAY_DISTANCE = "grok/moe_pathway_distance"
MOE_PATHWAY_COMPLEXITY = "grok/moe_pathway_complexity"
MOE_PATHWAYS = "grok/moe_pathways"
PROBE_MS = "grok/probe_ms"  # what one probe call cost
PROBE_INTERVAL = "grok/probe_interval"  # steps to the next one (stretched to the budget)


def probe_metric(probe_set: str, stat: str) -> str:
    """``grok/probe/<set>/<stat>``, e.g. ``grok/probe/val/exact_match``."""
    if not probe_set or "/" in probe_set:
        raise ValueError(f"probe set name must be non-empty without '/', got {probe_set!r}")
    if stat not in PROBE_STATS:
        raise ValueError(f"probe stat must be one of {PROBE_STATS}, got {stat!r}")
    return f"{PROBE_PREFIX}{probe_set}/{stat}"


def parse_probe_metric(name: str) -> tuple[str, str] | None:
    """``(set, stat)`` of a ``probe_metric`` name, or None for any other key."""
    if not name.startswith(PROBE_PREFIX):
        return None
    probe_set, _, stat = name[len(PROBE_PREFIX) :].partition("/")
    return (probe_set, stat) if probe_set and stat in PROBE_STATS else None


def group_norm_metric(group: str) -> str:
    """``grok/group_norm/<group>`` for one of ``LAYER_GROUPS``."""
    if group not in LAYER_GROUPS:
        raise ValueError(f"layer group must be one of {LAYER_GROUPS}, got {group!r}")
    return f"{GROUP_NORM_PREFIX}{group}"


# The trainer's acknowledgements of commands (``grokschedule.core.commands``).
ACKED_ID = "control/acked_id"
APPLIED_STEP = "control/applied_step"
ROLLBACKS = "control/rollbacks"
KICKS_ACTIVE = "control/kicks_active"
NOT_APPLIED_ID = "control/not_applied_id"  # the last kick the trainer lacks the means to apply
GRAD_TRANSFORMS = "control/grad_transforms"  # 0: the trainer cannot transform gradients (ZeRO)
CONTROL_WEIGHT_DECAY = "control/weight_decay"  # the weight decay in force (kicks skip decay at 0)
# The LoRA adapter's rank in force, and the largest its adapted layers allow (min(in, out)):
# a lora_rank kick goes only to a trial with an adapter, and never past either limit.
CONTROL_LORA_RANK = "control/lora_rank"
CONTROL_LORA_RANK_LIMIT = "control/lora_rank_limit"

# Signals the phase detector adds to every decision (the scheduler logs them as
# ``scheduler/<name>``): the train-loss spikes after memorization that came back down, Adam's
# "slingshots" (Thilak et al. 2022), a sign for grokking rather than against it.
SLINGSHOTS = "slingshots"  # how many so far
SLINGSHOT_HEIGHT = "slingshot_height"  # log10(peak / running minimum) of the latest one
LAST_SLINGSHOT_STEP = "last_slingshot_step"  # the step of the latest one's peak


@dataclass(frozen=True)
class MetricNames:
    """Which result keys carry the contract; ``None`` says the trainable does not report it."""

    time_attr: str = "step"
    target: str = "val_acc"
    train_loss: str | None = "train_loss"
    train_acc: str | None = "train_acc"
    val_loss: str | None = "val_loss"
    weight_norm: str | None = "weight_norm"

    @property
    def required(self) -> list[str]:
        """The keys every result must carry."""
        names = (
            self.time_attr,
            self.target,
            self.train_loss,
            self.train_acc,
            self.val_loss,
            self.weight_norm,
        )
        return [name for name in names if name]


@dataclass(frozen=True)
class Observation:
    """One reported result, reduced to the scalars the core reads (``None`` = not reported)."""

    step: float
    target: float
    train_loss: float | None = None
    train_acc: float | None = None
    val_loss: float | None = None
    weight_norm: float | None = None
    extras: Mapping[str, float] = field(default_factory=dict)  # the grok/* signals
    control: Mapping[str, float] = field(default_factory=dict)  # the trainer's acknowledgements

    @classmethod
    def from_result(
        cls,
        result: Mapping[str, Any],
        names: MetricNames = MetricNames(),
        control: Mapping[str, float] | None = None,
    ) -> Observation:
        """The observation of one reported ``result`` (a Tune result, a replayed bank row).

        ``control`` adds acknowledgements the trainable cannot report itself (kicks carried out
        by restart, the weight decay of its config); numeric ``grok/*`` and ``control/*`` keys
        are taken as they are, a missing target reads NaN.
        """

        def read(name: str | None) -> float | None:
            if name is None or result.get(name) is None:
                return None
            return float(result[name])

        def prefixed(prefix: str) -> dict[str, float]:
            return {
                key: float(value)
                for key, value in result.items()
                if key.startswith(prefix) and isinstance(value, int | float)
            }

        target = read(names.target)
        return cls(
            step=float(result[names.time_attr]),
            target=math.nan if target is None else target,
            train_loss=read(names.train_loss),
            train_acc=read(names.train_acc),
            val_loss=read(names.val_loss),
            weight_norm=read(names.weight_norm),
            extras=prefixed(SIGNAL_PREFIX),
            control={**prefixed(CONTROL_PREFIX), **(control or {})},
        )
