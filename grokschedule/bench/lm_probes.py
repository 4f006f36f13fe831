"""What the LM probes cost on the DeepSpeed trainer: ``grokschedule bench probes --task lm``.

For the LM task at its defaults (p = 23, hidden 64, 2 layers, 4 heads; batch 64, micro-batch
16, one rank, ZeRO-2 on CPU, one thread) as a dense model fully fine-tuned, with LoRA rank 8,
and as a 4-expert MoE with LoRA rank 8: the mean time of a training step, of the evaluation a
report makes anyway (both probe sets, now with the probe-set sums), and of each scheduled probe
(``TrainerProbes.measure``: group norms, LoRA effective ranks, greedy generation on 64 examples
per set, MoE routing), with the scheduled probes' share of a step and the interval
``ProbeSchedule`` stretches them to at the default 1 % budget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

VARIANTS: dict[str, dict[str, Any]] = {
    "dense, full fine-tune": {},
    "dense, LoRA r=8": {"lm_lora_rank": 8},
    "MoE 4 experts, LoRA r=8": {"lm_lora_rank": 8, "lm_experts": 4},
}
BUDGET = 0.01


def _mean_ms(call: Callable[[], object], repeats: int) -> float:
    call()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    return 1e3 * (time.perf_counter() - start) / repeats


def lm_probe_costs(repeats: int, stage: int = 2) -> list[dict[str, Any]]:
    """One row per variant of ``VARIANTS`` (see the module docstring)."""
    from grokschedule.bench.trainer import single_process_group

    with single_process_group():
        return [_costs(name, overrides, repeats, stage) for name, overrides in VARIANTS.items()]


def _costs(name: str, overrides: dict[str, Any], repeats: int, stage: int) -> dict[str, Any]:
    from grokschedule.training.deepspeed import trainer_probes as tp
    from grokschedule.training.deepspeed.config import TrainerConfig
    from grokschedule.training.deepspeed.engine import DeepSpeedRun
    from grokschedule.training.deepspeed.lm_task import LMTask

    values = {"task": "lm", "num_workers": 1, "zero_stage": stage, **overrides}
    config = TrainerConfig.from_mapping(values)
    run = DeepSpeedRun(config, LMTask.from_mapping(values, False), torch.device("cpu"))
    probes = tp.TrainerProbes(every=1, budget=BUDGET)
    task, engine, n = run.task, run.engine, tp.DEFAULT_SAMPLE

    def generate() -> None:
        for inputs, targets in task.eval_splits().values():
            task.generate(engine, inputs[:n], targets[:n])  # type: ignore[attr-defined]

    def route() -> None:
        inputs, targets = task.train_split()
        task.router_choices(engine, inputs[:n], targets[:n])  # type: ignore[attr-defined]

    step_ms = _mean_ms(run.train_step, repeats)
    with torch.no_grad():
        row = {
            "variant": name,
            "step_ms": step_ms,
            "eval_ms": _mean_ms(lambda: [run.evaluate(s) for s in ("val", "probe")], 3),
            "group_norms_ms": _mean_ms(
                lambda: tp.group_weight_norms(engine.module, run.device), repeats
            ),
            "lora_eff_rank_ms": _mean_ms(lambda: tp.lora_effective_ranks(engine.module), repeats),
            "generate_ms": _mean_ms(generate, repeats),
            "routing_ms": _mean_ms(route, repeats) if "lm_experts" in overrides else 0.0,
            "probes_ms": _mean_ms(lambda: probes.measure(run), repeats),
        }
    row["probe_share_of_step"] = row["probes_ms"] / step_ms
    row["interval_at_budget"] = max(1, math.ceil(row["probe_share_of_step"] / BUDGET))
    engine.destroy()
    return row


def lm_report(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | train step | eval (val + probe) | group norms | LoRA eff. rank | generation "
        "(2 × 64) | routing | all scheduled probes | ÷ step | every (1 % budget) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['step_ms']:.1f} ms | {r['eval_ms']:.1f} ms | "
            f"{r['group_norms_ms']:.2f} ms | {r['lora_eff_rank_ms']:.2f} ms | "
            f"{r['generate_ms']:.1f} ms | {r['routing_ms']:.1f} ms | {r['probes_ms']:.1f} ms | "
            f"{r['probe_share_of_step']:.2f}× | {r['interval_at_budget']} steps |"
        )
    return "\n".join(lines)
