"""What the in-training probes cost, and how they move around the grok step.

Part 1 (cost): for the default MLP (embed 128, hidden 512, p = 47, full batch) and the ``moe``
arch, the mean time of one training step and of each probe — weight spectra (default: exact SVD
up to min-dim 256, randomized rank 64 above), the forward probes (representation covariance,
MoE pathways), the slow-gradient EMA update (every step) and its share measurement — per call
and as a share of one step, plus the error of the randomized entropies against exact SVD.

Part 2 (behaviour): per arch in ``--archs`` (default mlp), two real runs, p = 47, train fraction
0.5, lr 3e-3, one with weight decay 1 (the MLP groks) and one with weight decay 0 (it only
memorizes), probes every ``probe_every`` steps with the budget lifted (``probe_budget`` 1) so
every probe is taken. Per run: the memorization and grok steps, where each signal stands at the
first probe, at memorization, at grok and at the end, its minimum, and the first step the
normalized entropies fall below ``--threshold`` (0.61, arXiv 2604.13123).

    OMP_NUM_THREADS=1 grokschedule bench probes --archs mlp moe --output probes_bench.json

``--task lm`` measures the LM probes on the DeepSpeed trainer instead (``bench.lm_probes``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from grokschedule.bench.timing import mean_ms
from grokschedule.training.modular.trainer import ModularTrainer, TrainConfig
from grokschedule.training.probes import (
    ModelProbes,
    covariance_spectrum,
    entropy_and_rank,
    singular_values,
)

GROK, MEMORIZED = 0.95, 0.99
SIGNALS = (
    "grok/repr_entropy",
    "grok/spectral_entropy",
    "grok/spectral_entropy/hidden.weight",
    "grok/eff_rank/hidden.weight",
    "grok/slow_grad_share",
    "weight_norm",
    "grok/moe_pathway_distance",
    "grok/moe_pathway_complexity",
)


def _randomized_error(probes: ModelProbes) -> dict[str, float]:
    """|default − exact SVD| normalized entropy: the largest over the weights, and the
    representation's."""
    model = probes.model
    matrices = [p.detach() for p in model.parameters() if p.ndim == 2]
    captured: list[torch.Tensor] = []
    handle = probes.readout.register_forward_pre_hook(lambda _, args: captured.append(args[0]))
    with torch.no_grad():
        model(probes.inputs)
    handle.remove()
    errors = []
    for matrix in matrices:
        default = entropy_and_rank(singular_values(matrix))[0]
        exact = entropy_and_rank(singular_values(matrix, rank=min(matrix.shape)))[0]
        errors.append(abs(default - exact))
    centered = captured[-1] - captured[-1].mean(0)
    default = entropy_and_rank(covariance_spectrum(captured[-1]))[0]
    exact = entropy_and_rank(singular_values(centered, rank=min(centered.shape)).pow(2))[0]
    return {"weights": max(errors), "representation": abs(default - exact)}


def probe_costs(arch: str, repeats: int, probe_every: int) -> dict[str, Any]:
    """Part 1 for one arch: ms per call and share of one training step."""
    trainer = ModularTrainer(TrainConfig(arch=arch, probe_every=probe_every, probe_budget=1.0))
    probes = trainer.probes
    assert probes is not None
    for _ in range(5):
        trainer.train_step()
    step_ms = mean_ms(trainer.train_step, repeats)  # includes the EMA update (probes are on)
    params = list(trainer.model.parameters())
    costs = {
        "weight spectra (norm, entropy, eff. rank)": mean_ms(probes.weight_metrics, repeats),
        "forward probes (representation, pathways)": mean_ms(probes.forward_metrics, repeats),
        "slow-grad EMA update (every step)": mean_ms(
            lambda: probes.slow_grad.update(params), repeats
        ),
        "slow-grad update + share measurement (once per probe)": mean_ms(
            lambda: probes.slow_grad.update(params, measure=True), repeats
        ),
    }
    costs["all probes, one call (grok/probe_ms)"] = mean_ms(probes.measure, repeats)
    ema_bytes = sum(p.numel() * 4 for p in params)
    return {
        "arch": arch,
        "params": sum(p.numel() for p in params),
        "step_ms": step_ms,
        "costs_ms": costs,
        "ema_mib": ema_bytes / 2**20,
        "entropy_error": _randomized_error(probes),
    }


def _first(trace: list[dict[str, float]], test: Callable[[dict[str, float]], bool]) -> int | None:
    return next((int(r["step"]) for r in trace if test(r)), None)


def behaviour_run(arch: str, weight_decay: float, steps: int, probe_every: int) -> dict[str, Any]:
    """Part 2: one run's probe trace and the steps that matter."""
    config = TrainConfig(
        arch=arch,
        p=47,
        train_fraction=0.5,
        lr=3e-3,
        weight_decay=weight_decay,
        max_steps=steps,
        eval_every=probe_every,
        probe_every=probe_every,
        probe_budget=1.0,
    )
    start = time.perf_counter()
    trainer = ModularTrainer(config)
    trace = [{k: float(v) for k, v in r.items()} for r in trainer.run()]
    wall = time.perf_counter() - start
    assert trainer.probes is not None
    return {
        "arch": arch,
        "weight_decay": weight_decay,
        "wall_s": wall,
        "entropy_error_at_end": _randomized_error(trainer.probes),
        "memorized": _first(trace, lambda r: r["train_acc"] >= MEMORIZED),
        "grokked": _first(trace, lambda r: r["val_acc"] >= GROK),
        "trace": trace,
    }


def _at(trace: list[dict[str, float]], step: int | None, key: str) -> str:
    row = next((r for r in trace if step is not None and r["step"] >= step), None)
    return "—" if row is None or key not in row else f"{row[key]:.3g}"


def _signals(trace: list[dict[str, float]]) -> list[str]:
    return [key for key in SIGNALS if any(key in r for r in trace)]


def _cross(trace: list[dict[str, float]], key: str, threshold: float) -> int | None:
    return _first(trace, lambda r: key in r and r[key] < threshold)


def report(
    costs: Sequence[dict[str, Any]],
    runs: Sequence[dict[str, Any]],
    threshold: float,
    probe_every: int,
) -> str:
    lines = [
        "| arch | params | probe | ms per call | % of a step | % of training at every "
        f"{probe_every} |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for c in costs:
        for name, ms in c["costs_ms"].items():
            per_step = name.startswith("slow-grad EMA")
            share = 100 * ms / c["step_ms"]
            amortized = share if per_step else share / probe_every
            lines.append(
                f"| {c['arch']} | {c['params']:,} | {name} | {ms:.2f} | {share:.1f} % | "
                f"{amortized:.2f} % |"
            )
        lines.append(f"| {c['arch']} | | one training step | {c['step_ms']:.2f} | 100 % | |")
    lines.append("")
    for c in costs:
        lines.append(
            f"{c['arch']}: EMA memory {c['ema_mib']:.2f} MiB (one fp32 gradient copy); "
            "default-vs-exact SVD normalized entropy error at init: weights ≤ "
            f"{c['entropy_error']['weights']:.4f}, representation "
            f"{c['entropy_error']['representation']:.4f}"
        )
    lines += [
        "",
        "| arch | weight decay | memorized | grokked | signal | first probe | memorized | "
        f"grokked | end | min | first < {threshold} |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        trace = run["trace"]
        for key in _signals(trace):
            values = [r[key] for r in trace if key in r]
            lines.append(
                f"| {run['arch']} | {run['weight_decay']:g} | {run['memorized']} | "
                f"{run['grokked'] or 'no'} | "
                f"`{key}` | {_at(trace, trace[0]['step'], key)} | "
                f"{_at(trace, run['memorized'], key)} | {_at(trace, run['grokked'], key)} | "
                f"{_at(trace, trace[-1]['step'], key)} | {min(values):.3g} | "
                f"{(_cross(trace, key, threshold) or 'never') if 'entropy' in key else ''} |"
            )
    for run in runs:
        columns = ("step", "train_acc", "val_acc", *_signals(run["trace"]))
        lines.append(
            f"\n{run['arch']}, weight decay {run['weight_decay']:g} ({run['wall_s']:.0f} s; "
            "default-vs-exact entropy error at the end: weights ≤ "
            f"{run['entropy_error_at_end']['weights']:.4f}, representation "
            f"{run['entropy_error_at_end']['representation']:.4f}), every 250 steps:\n  "
            + "  ".join(c.removeprefix("grok/") for c in columns)
        )
        for r in run["trace"]:
            if r["step"] % 250 == 0:
                lines.append("  " + "  ".join(f"{r[k]:.3g}" if k in r else "—" for k in columns))
    return "\n".join(lines)


def probes_bench_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--task", choices=("modular", "lm"), default="modular", help="lm: the DeepSpeed LM probes"
    )
    parser.add_argument("--repeats", type=int, help="calls per cost measurement (20; lm: 10)")
    parser.add_argument("--steps", type=int, help="steps per behaviour run (2,500; lm: 400)")
    parser.add_argument("--probe-every", type=int, default=50)
    parser.add_argument("--threshold", type=float, default=0.61)
    parser.add_argument("--archs", nargs="+", default=["mlp"], help="archs of the part-2 runs")
    parser.add_argument("--skip-costs", action="store_true", help="part 2 (runs) only")
    parser.add_argument("--skip-runs", action="store_true", help="part 1 (costs) only")
    parser.add_argument("--probe-budget", type=float, default=0.01, help="lm only")
    parser.add_argument("--eval-every", type=int, default=50, help="lm only: steps per report")
    parser.add_argument("--lm-op", choices=("add", "compose"), default="add", help="lm only")
    parser.add_argument("--tiny", action="store_true", help="lm only: a tiny model (seconds)")
    parser.add_argument("--output", type=Path, default=Path("probes_bench.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.task == "lm":
        return _lm_main(args)
    args.repeats = 20 if args.repeats is None else args.repeats
    args.steps = 2_500 if args.steps is None else args.steps
    costs = (
        []
        if args.skip_costs
        else [probe_costs(arch, args.repeats, args.probe_every) for arch in ("mlp", "moe")]
    )
    runs = (
        []
        if args.skip_runs
        else [
            behaviour_run(arch, wd, args.steps, args.probe_every)
            for arch in args.archs
            for wd in (1.0, 0.0)
        ]
    )
    print(report(costs, runs, args.threshold, args.probe_every))
    args.output.write_text(json.dumps({"costs": costs, "runs": runs}, indent=1))
    print(f"\nwrote {args.output}")
    return 0


TINY_LM = {"lm_p": 7, "lm_perm_size": 3, "lm_hidden": 16, "lm_layers": 1, "lm_heads": 2}


def _lm_main(args: argparse.Namespace) -> int:
    from grokschedule.bench.lm_probes import LMProbeOptions, lm_probe_costs, lm_report

    options = LMProbeOptions(
        steps=400 if args.steps is None else args.steps,
        repeats=10 if args.repeats is None else args.repeats,
        probe_every=args.probe_every,
        probe_budget=args.probe_budget,
        eval_every=args.eval_every,
        op=args.lm_op,
        model=TINY_LM if args.tiny else {},
    )
    start = time.perf_counter()
    rows = lm_probe_costs(options)
    print(lm_report(rows))
    print(f"\n({time.perf_counter() - start:.0f} s)")
    args.output.write_text(json.dumps({"lm": rows}, indent=1))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(probes_bench_main())
