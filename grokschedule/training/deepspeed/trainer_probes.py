"""Probes on the DeepSpeed trainer: the probe-set signals of a language model and what its
weights say, exact under ZeRO-2 and ZeRO-3, at a cost held under a budget.

Two kinds, reported as ``grok/*`` metrics (names in ``grokschedule.core.contract``):

- per-example probe-set signals, ``grok/probe/<set>/{loss,ppl,exact_match,conf_correct,
  conf_wrong}`` (``probe_set_metrics``), summed from the evaluation pass the report makes
  anyway (``DeepSpeedRun.evaluate``): one softmax more, no forward more, on every report;
- on the probe schedule (``probes.ProbeSchedule``: at most every ``probe_every`` steps, and
  only once the training time pays for it, so the probes' total stays within ``probe_budget``
  of the training time over the run), ``TrainerProbes.metrics``:
  the diversity of greedy generations (``distinct_1``/``distinct_2`` on a sample of each set),
  the weight norm per layer group (``grok/group_norm/<group>``), the effective rank of each
  LoRA update ``B @ A`` (mean and min) and, for a mixture of experts, the routing pathways of a
  sample of training examples (``probes.routing_pathways``).

Every rank runs the same collectives in the same order: the decision that a probe is due is
rank 0's, broadcast (step times differ between ranks, so their schedules would disagree), every
rank decodes the same sample (the data are identical on every rank), norms of partitioned
parameters come from the local shards and are all-reduced, and the LoRA factors under ZeRO-3
are gathered (``deepspeed.zero.GatheredParameters``; they are r × d, small).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import deepspeed
import torch
from torch import nn

from grokschedule.core.contract import (
    LAYER_GROUPS,
    LORA_EFF_RANK_MEAN,
    LORA_EFF_RANK_MIN,
    MOE_PATHWAY_COMPLEXITY,
    MOE_PATHWAY_DISTANCE,
    MOE_PATHWAYS,
    PROBE_CONF_CORRECT,
    PROBE_CONF_WRONG,
    PROBE_DISTINCT_1,
    PROBE_DISTINCT_2,
    PROBE_EXACT_MATCH,
    PROBE_INTERVAL,
    PROBE_LOSS,
    PROBE_MS,
    PROBE_PPL,
    VAL_CONFIDENCE,
    group_norm_metric,
    probe_metric,
)
from grokschedule.training.deepspeed.engine import DeepSpeedRun, all_reduce_sum, broadcast_object
from grokschedule.training.probes import ProbeSchedule, effective_rank, routing_pathways

DEFAULT_SAMPLE = 64  # examples per set decoded for diversity, and routed for pathways


def probe_set_metrics(probe_set: str, result: dict[str, float]) -> dict[str, float]:
    """The ``grok/probe/<set>/*`` metrics of one ``DeepSpeedRun.evaluate`` result (empty for a
    task without token sums); for ``"val"`` also ``grok/val_confidence``, which the predictor
    reads."""
    if "token_loss" not in result:
        return {}
    loss = result["token_loss"]
    out = {
        probe_metric(probe_set, PROBE_LOSS): loss,
        probe_metric(probe_set, PROBE_PPL): math.exp(min(loss, 700.0)),  # no inf in a report
        probe_metric(probe_set, PROBE_EXACT_MATCH): result["acc"],
    }
    for key, stat in (("conf_correct", PROBE_CONF_CORRECT), ("conf_wrong", PROBE_CONF_WRONG)):
        if key in result:
            out[probe_metric(probe_set, stat)] = result[key]
    if probe_set == "val":
        out[VAL_CONFIDENCE] = result["confidence"]
    return out


def distinct_n(sequences: Iterable[Sequence[int]], n: int) -> float:
    """Distinct n-grams over all n-grams of ``sequences`` (Li et al. 2016, distinct-n), pooled;
    0 when there are none (every sequence shorter than n)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = [tuple(s[i : i + n]) for s in sequences for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def layer_group(name: str) -> str:
    """The layer group of a parameter, from its name (HF Llama/Mixtral naming, PEFT's LoRA)."""
    if "lora_" in name:
        return "lora"
    if "embed" in name:
        return "embeddings"
    if "lm_head" in name:
        return "head"
    if ".mlp.gate." in name or "router" in name:
        return "router"
    if "attn" in name or "attention" in name:
        return "attention"
    if ".mlp." in name or "experts" in name:
        return "mlp"
    if "norm" in name:
        return "norm"
    return "other"


@torch.no_grad()
def group_weight_norms(module: nn.Module, device: torch.device) -> dict[str, float]:
    """L2 norm of all parameters (frozen ones too: LoRA's base) per ``layer_group``, exact under
    ZeRO-3 as ``DeepSpeedRun.weight_norm`` is: a partitioned parameter adds its local shard and
    the shard sums are all-reduced; a replicated one counts once. Tied weights count once."""
    sharded = torch.zeros(len(LAYER_GROUPS), dtype=torch.float64, device=device)
    replicated = torch.zeros_like(sharded)
    seen = torch.zeros(len(LAYER_GROUPS), dtype=torch.bool)
    for name, param in module.named_parameters():
        slot = LAYER_GROUPS.index(layer_group(name))
        seen[slot] = True
        shard = getattr(param, "ds_tensor", None)
        tensor, sums = (param, replicated) if shard is None else (shard, sharded)
        sums[slot] += torch.linalg.vector_norm(tensor.detach().float()).double().square()
    total = all_reduce_sum(sharded, device) + replicated.cpu()
    return {
        group_norm_metric(group): math.sqrt(float(total[k]))
        for k, group in enumerate(LAYER_GROUPS)
        if seen[k]
    }


def lora_pairs(module: nn.Module) -> list[tuple[str, nn.Parameter, nn.Parameter]]:
    """``(layer, A, B)`` for every LoRA-adapted linear layer (PEFT's ``lora_A``/``lora_B``)."""
    pairs = []
    for name, child in module.named_modules():
        a, b = getattr(child, "lora_A", None), getattr(child, "lora_B", None)
        if isinstance(a, nn.ModuleDict) and isinstance(b, nn.ModuleDict):
            for adapter in a:
                if isinstance(a[adapter], nn.Linear) and isinstance(b[adapter], nn.Linear):
                    pairs.append((name, a[adapter].weight, b[adapter].weight))
    return pairs


@torch.no_grad()
def lora_effective_ranks(module: nn.Module) -> list[float]:
    """Effective rank (``probes.effective_rank``) of each LoRA update ``B @ A``. From the r × r
    core of the product, ``R_B R_Aᵀ`` with ``B = Q_B R_B`` and ``Aᵀ = Q_A R_A``: it has the same
    singular values, so no d_out × d_in matrix is formed. Under ZeRO-3 the factors are gathered
    (collective: every rank calls this). A zero update (B at init) has effective rank 1."""
    ranks = []
    for _, a, b in lora_pairs(module):
        partitioned = [p for p in (a, b) if hasattr(p, "ds_id")]
        with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
            r_b = torch.linalg.qr(b.detach().float(), mode="r").R
            r_a = torch.linalg.qr(a.detach().float().T, mode="r").R
            ranks.append(effective_rank(r_b @ r_a.T))
    return ranks


class TrainerProbes:
    """The scheduled probes of one DeepSpeed run. The loop calls ``step_done`` after every
    optimizer step with its wall time and merges ``metrics`` into each report."""

    def __init__(self, every: int, budget: float = 0.01, sample: int = DEFAULT_SAMPLE) -> None:
        if sample < 2:
            raise ValueError(f"probe sample must be >= 2 (pathways compare pairs), got {sample}")
        self.schedule = ProbeSchedule(every, budget)
        self.sample = sample

    def step_done(self, seconds: float) -> None:
        self.schedule.step_done(seconds)

    def metrics(self, run: DeepSpeedRun) -> dict[str, float]:
        """The probe metrics if a probe is due at ``run.step`` (rank 0 decides), else ``{}``;
        every rank must call it at the same reports."""
        if not broadcast_object(self.schedule.due(run.step)):
            return {}
        start = time.perf_counter()
        out = self.measure(run)
        seconds = time.perf_counter() - start
        self.schedule.probed(run.step, seconds)
        out[PROBE_MS] = 1e3 * seconds
        out[PROBE_INTERVAL] = float(self.schedule.interval)
        return out

    @torch.no_grad()
    def measure(self, run: DeepSpeedRun) -> dict[str, float]:
        """All probes now, unscheduled: what ``metrics`` reports when one is due."""
        engine, task, device = run.engine, run.task, run.device
        out = group_weight_norms(engine.module, device)
        ranks = lora_effective_ranks(engine.module)
        if ranks:
            out[LORA_EFF_RANK_MEAN] = sum(ranks) / len(ranks)
            out[LORA_EFF_RANK_MIN] = min(ranks)
        engine.eval()
        generate = getattr(task, "generate", None)
        if generate is not None:
            for name, (inputs, targets) in task.eval_splits().items():
                x, y = inputs[: self.sample].to(device), targets[: self.sample].to(device)
                answers = generate(engine, x, y)
                out[probe_metric(name, PROBE_DISTINCT_1)] = distinct_n(answers, 1)
                out[probe_metric(name, PROBE_DISTINCT_2)] = distinct_n(answers, 2)
        route = getattr(task, "router_choices", None)
        if route is not None:
            inputs, targets = task.train_split()
            x, y = inputs[: self.sample].to(device), targets[: self.sample].to(device)
            choices = route(engine, x, y)
            if choices is not None:
                pathways = routing_pathways(choices)
                out[MOE_PATHWAY_DISTANCE] = pathways.distance
                out[MOE_PATHWAY_COMPLEXITY] = pathways.complexity
                out[MOE_PATHWAYS] = float(pathways.distinct)
        return out

    def state_dict(self) -> dict[str, Any]:
        return self.schedule.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state)
