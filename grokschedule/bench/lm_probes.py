"""What the LM probes cost on the DeepSpeed trainer: ``grokschedule bench probes --task lm``.

For the LM task (``lm_op`` add or compose, default model: hidden 64, 2 layers, 4 heads; batch 64,
micro-batch 16; one rank, ZeRO-2 on gloo on CPU, one thread) as a dense Llama with LoRA rank 8
and as a 4-expert Mixtral-style MoE (``lm_experts``) with LoRA rank 8:

1. *Per signal*, the mean time of one call: a training step; the report's evaluation of both
   probe sets, of which the probe-set sums (``grok/probe/<set>/{loss,ppl,exact_match,
   conf_correct,conf_wrong}``: one softmax more over the same logits) are timed apart; and each
   scheduled probe of ``TrainerProbes.measure`` — greedy generation of ``sample`` answers per
   set (``distinct_1``/``distinct_2``), the weight norm per layer group, the LoRA effective
   ranks, the MoE routing pathways — and all of them in one call.
2. *In the loop*, two runs of ``steps`` steps from the same seed, the trainer's loop as
   ``adapters.trainables.train_loop`` runs it (step, ``step_done``, ``after_step``, a report
   every ``eval_every`` steps), without probes and with ``TrainerProbes(probe_every,
   probe_budget)``: the time per step of each, and the probes' share of the probing run's wall
   time — over the whole run (mean) and per interval between probes (each probe's time over the
   wall time since the previous probe ended), and of its training-step time, which is what
   ``probe_budget`` bounds. The first interval is reported apart (the first probe is taken at
   ``probe_every`` whatever it costs: its cost is unknown until then); the budget counts as held
   when the run's probe time is within ``probe_budget`` of its training time. A later interval
   stays within it while its probe costs no more than the one before
   (``probes.ProbeSchedule``), so each probe's time is listed with its step.

    OMP_NUM_THREADS=1 grokschedule bench probes --task lm --output lm_probes_bench.json
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from grokschedule.bench.timing import mean_ms

if TYPE_CHECKING:
    from grokschedule.training.deepspeed.engine import DeepSpeedRun
    from grokschedule.training.deepspeed.trainer_probes import TrainerProbes

VARIANTS: dict[str, dict[str, Any]] = {
    "dense, LoRA r=8": {"lm_lora_rank": 8},
    "MoE 4 experts, LoRA r=8": {"lm_lora_rank": 8, "lm_experts": 4},
}
SIGNALS = (
    ("train step", "step_ms"),
    ("eval pass, val + probe (every report)", "eval_ms"),
    ("  of which probe-set sums (softmax, confidence)", "probe_sums_ms"),
    ("generation, distinct_1/2 (2 sets)", "generate_ms"),
    ("group norms", "group_norms_ms"),
    ("LoRA effective rank", "lora_rank_ms"),
    ("MoE pathways", "pathways_ms"),
    ("all scheduled probes, one call", "probes_ms"),
)


@dataclass(frozen=True)
class LMProbeOptions:
    """What the bench runs; the defaults are the trainer's (``eval_every``, ``probe_budget``)
    and the README's ``probe_every``."""

    steps: int = 400
    repeats: int = 10
    probe_every: int = 50
    probe_budget: float = 0.01
    eval_every: int = 50
    op: str = "add"
    model: dict[str, Any] = field(default_factory=dict)  # extra lm_* keys (smaller models)

    def __post_init__(self) -> None:
        for name in ("steps", "repeats", "probe_every", "eval_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be an int > 0, got {value!r}")
        if not 0.0 < self.probe_budget <= 1.0:
            raise ValueError(f"probe_budget must be in (0, 1], got {self.probe_budget!r}")
        if self.op not in ("add", "compose"):
            raise ValueError(f"op must be 'add' or 'compose', got {self.op!r}")


def lm_probe_costs(options: LMProbeOptions) -> list[dict[str, Any]]:
    """One row per variant of ``VARIANTS`` (see the module docstring)."""
    from grokschedule.bench.trainer import single_process_group

    with single_process_group():
        return [_variant(name, overrides, options) for name, overrides in VARIANTS.items()]


def _values(overrides: dict[str, Any], options: LMProbeOptions) -> dict[str, Any]:
    return {
        "task": "lm",
        "lm_op": options.op,
        "num_workers": 1,
        "zero_stage": 2,
        "max_steps": options.steps,
        "eval_every": options.eval_every,
        **options.model,
        **overrides,
    }


def _build(values: dict[str, Any]) -> DeepSpeedRun:
    from grokschedule.training.deepspeed.config import TrainerConfig
    from grokschedule.training.deepspeed.engine import DeepSpeedRun
    from grokschedule.training.deepspeed.lm_task import LMTask

    config = TrainerConfig.from_mapping(values)
    return DeepSpeedRun(config, LMTask.from_mapping(values, False), torch.device("cpu"))


def _variant(name: str, overrides: dict[str, Any], options: LMProbeOptions) -> dict[str, Any]:
    from grokschedule.training.deepspeed.trainer_probes import TrainerProbes

    values = _values(overrides, options)
    run = _build(values)
    try:
        costs = _signal_costs(run, options.repeats)
    finally:
        run.engine.destroy()
    loops = {}
    for label, probes in (
        ("off", None),
        ("on", TrainerProbes(options.probe_every, options.probe_budget)),
    ):
        run = _build(values)
        try:
            loops[label] = _loop(run, probes, options.steps, options.eval_every)
        finally:
            run.engine.destroy()
    on, off = loops["on"], loops["off"]
    first, later = on["probes"][:1], on["probes"][1:]
    return {
        "variant": name,
        "options": asdict(options),
        "costs_ms": costs,
        "step_ms_off": 1e3 * off["wall_s"] / options.steps,
        "step_ms_on": 1e3 * on["wall_s"] / options.steps,
        "probes": on["probes"],
        "probe_s": on["probe_s"],
        "wall_s": on["wall_s"],
        "train_s": on["train_s"],
        "overhead_mean": on["probe_s"] / on["wall_s"],
        "overhead_of_training": on["probe_s"] / on["train_s"],
        "first_interval": _worst(first),
        "worst_later_interval": _worst(later),
        "budget_held": on["probe_s"] <= options.probe_budget * on["train_s"],
    }


def _worst(probes: list[dict[str, float]]) -> dict[str, float] | None:
    """The interval of ``probes`` whose probe took the largest share of its training time."""
    return max(probes, key=lambda p: p["train_share"], default=None)


@torch.no_grad()
def _signal_costs(run: DeepSpeedRun, repeats: int) -> dict[str, float]:
    from grokschedule.training.deepspeed import trainer_probes as tp
    from grokschedule.training.deepspeed.lm_task import IGNORE, PAD, LMTask
    from grokschedule.training.probes import routing_pathways

    task, engine, device = run.task, run.engine, run.device
    assert isinstance(task, LMTask)
    n = tp.DEFAULT_SAMPLE
    with torch.enable_grad():
        for _ in range(3):  # past the first steps' allocations
            run.train_step()
        step_ms = mean_ms(run.train_step, repeats)
    engine.eval()
    splits = task.eval_splits()
    logits = {
        split: (engine(input_ids=x, attention_mask=x != PAD).logits.float(), y != IGNORE)
        for split, (x, y) in splits.items()
    }

    def probe_sums() -> None:  # what LMTask.stats adds in evaluation, over both sets
        for scores, mask in logits.values():
            top = scores.softmax(-1).amax(-1)
            _ = (top * mask).sum(1) / mask.sum(1).clamp(min=1)

    def generate() -> None:
        for x, y in splits.values():
            answers = task.generate(engine, x[:n], y[:n])
            tp.distinct_n(answers, 1), tp.distinct_n(answers, 2)

    def pathways() -> None:
        x, y = task.train_split()
        choices = task.router_choices(engine, x[:n], y[:n])
        if choices is not None:
            routing_pathways(choices)

    probes = tp.TrainerProbes(every=1, budget=1.0)
    return {
        "step_ms": step_ms,
        "eval_ms": mean_ms(lambda: [run.evaluate(s) for s in splits], repeats),
        "probe_sums_ms": mean_ms(probe_sums, repeats),
        "generate_ms": mean_ms(generate, repeats),
        "group_norms_ms": mean_ms(lambda: tp.group_weight_norms(engine.module, device), repeats),
        "lora_rank_ms": mean_ms(lambda: tp.lora_effective_ranks(engine.module), repeats),
        "pathways_ms": mean_ms(pathways, repeats) if task.config.experts else 0.0,
        "probes_ms": mean_ms(lambda: probes.measure(run), repeats),
    }


def _loop(
    run: DeepSpeedRun, probes: TrainerProbes | None, steps: int, eval_every: int
) -> dict[str, Any]:
    """The trainer's loop (``train_loop_per_worker`` without Ray, commands or checkpoints); per
    probe taken: its step, time, and share of the wall and training time since the last one."""
    from grokschedule.core.contract import PROBE_INTERVAL, PROBE_MS
    from grokschedule.training.deepspeed.reporting import report_metrics

    taken: list[dict[str, float]] = []
    train_s = probe_s = since_train = 0.0
    start = since = time.perf_counter()
    while run.step < steps:
        step_started = time.perf_counter()
        run.train_step()
        seconds = time.perf_counter() - step_started
        train_s += seconds
        since_train += seconds
        if probes is not None:
            probes.step_done(seconds)
        run.after_step()
        if run.step % eval_every and run.step != steps:
            continue
        metrics = report_metrics(run, probes)
        if PROBE_MS in metrics:
            cost = metrics[PROBE_MS] / 1e3
            now = time.perf_counter()
            taken.append(
                {
                    "step": run.step,
                    "probe_ms": 1e3 * cost,
                    "share": cost / (now - since),
                    "train_share": cost / since_train,
                    "interval": metrics[PROBE_INTERVAL],
                    "train_s_before": train_s,  # the run's totals when it was taken
                    "probe_s_before": probe_s,
                }
            )
            probe_s += cost
            since, since_train = now, 0.0
    return {
        "wall_s": time.perf_counter() - start,
        "train_s": train_s,
        "probe_s": probe_s,
        "probes": taken,
    }


def lm_report(rows: list[dict[str, Any]]) -> str:
    """The per-signal table, then the loop table."""
    names = [r["variant"] for r in rows]
    lines = [
        "| signal | " + " | ".join(f"{n}: ms per call | ÷ step" for n in names) + " |",
        "|---|" + "---:|---:|" * len(rows),
    ]
    for label, key in SIGNALS:
        cells = []
        for r in rows:
            ms, step = r["costs_ms"][key], r["costs_ms"]["step_ms"]
            skip = key == "pathways_ms" and ms == 0.0  # a dense model has no router
            cells.append("— | —" if skip else f"{ms:.2f} | {ms / step:.2f}×")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    o = rows[0]["options"]
    lines += [
        "",
        f"Loop, {o['steps']} steps, report every {o['eval_every']}, probe_every "
        f"{o['probe_every']}, probe_budget {o['probe_budget']:g}; probes' share of the wall "
        "time / of the training-step time (what the budget bounds):",
        "",
        "| model | ms/step, probes off | ms/step, probes on | probes: step (ms) | "
        "overhead, mean | first interval | worst later interval | mean within budget |",
        "|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in rows:
        taken = ", ".join(f"{int(p['step'])} ({p['probe_ms']:.0f})" for p in r["probes"])
        lines.append(
            f"| {r['variant']} | {r['step_ms_off']:.1f} | {r['step_ms_on']:.1f} | "
            f"{taken} | "
            f"{_pct(r['overhead_mean'])} / {_pct(r['overhead_of_training'])} | "
            f"{_interval(r['first_interval'])} | {_interval(r['worst_later_interval'])} | "
            f"{'yes' if r['budget_held'] else 'NO'} |"
        )
    return "\n".join(lines)


def _pct(share: float) -> str:
    return f"{100 * share:.2f} %"


def _interval(probe: dict[str, float] | None) -> str:
    if probe is None:
        return "—"
    return f"{_pct(probe['share'])} / {_pct(probe['train_share'])} (step {int(probe['step'])})"
