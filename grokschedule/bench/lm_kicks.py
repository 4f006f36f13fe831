"""``grokschedule bench lm-kicks``: do the LM plateau remedies shorten grokking, and what do they
cost? Steps to grok with and without a kick, forgetting, and whether a rollback undoes it.

Each config (the LM task through ``DeepSpeedRun``, ZeRO-2, one gloo rank in this process: the
engine, kicks and rollback points a Tune trial's workers use) is trained once per arm:

- ``none``: plain AdamW to the budget;
- ``lora_rank``: the LoRA adapter's rank × ``--rank-factor`` (e.g. 4 → 16), the function kept;
- ``sgd_switch``: AdamW set aside for SGD-momentum at ``--sgd-lr`` for ``--sgd-steps`` steps,
  then back (the seed article's recipe).

A kick is applied through the live-control path (a channel command behind a rollback point) at
the first evaluation at or past ``--kick-step`` whose target is still under the threshold, so
every arm of a config is kicked on the same plateau. *Forgetting*: the training accuracy falls
more than ``--forget-drop`` below its value at the kick and is still below it ``--recover``
steps after the kick's window ends; the bench then rolls back and records whether the training
accuracy came back. Steps to grok count from step 0; a run that never groks counts at the
budget. Results go to JSON and a markdown table (BENCHMARKS.md "LM kicks").
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from grokschedule.bench.trainer import single_process_group
from grokschedule.core.commands import KICK, ROLLBACK
from grokschedule.core.commands import Command as ChannelCommand
from grokschedule.core.kicks import Kick
from grokschedule.training.deepspeed.config import TrainerConfig
from grokschedule.training.deepspeed.engine import DeepSpeedRun
from grokschedule.training.deepspeed.lm_task import LMTask

ARMS = ("none", "lora_rank", "sgd_switch")


@dataclass
class ArmResult:
    """One config trained under one arm."""

    config: dict[str, Any]
    arm: str
    grok_step: int | None
    budget: int
    kick_step: int | None = None
    train_acc_at_kick: float | None = None
    forgot: bool = False
    rollback_restored: bool | None = None  # None: no rollback was needed
    wall_s: float = 0.0
    history: list[tuple[int, float, float]] = field(default_factory=list)  # step, train, val

    @property
    def steps_to_grok(self) -> int:
        return self.budget if self.grok_step is None else self.grok_step


@dataclass(frozen=True)
class Plan:
    kick_step: int
    steps: int
    eval_every: int
    threshold: float
    rank_factor: int
    sgd_lr: float
    sgd_steps: int
    forget_drop: float
    recover: int


def _kick(arm: str, run: DeepSpeedRun, plan: Plan) -> None:
    """Apply ``arm``'s kick between two optimizer steps, as a channel command: behind a
    rollback point, acknowledged in ``control``."""
    if arm == "lora_rank":
        kick = Kick("lora_rank", {"factor": plan.rank_factor}, reason="bench lm-kicks")
    else:
        kick = Kick(
            "sgd_switch",
            {"lr": plan.sgd_lr, "momentum": 0.9},
            duration_steps=plan.sgd_steps,
            reason="bench lm-kicks",
        )
    run.apply(ChannelCommand(0, KICK, kick))
    if run.control.not_applied_id == 0:
        raise ValueError(f"the engine refused the {arm} kick (see the warning above)")


def _run_arm(values: Mapping[str, Any], arm: str, plan: Plan) -> ArmResult:
    started = time.monotonic()
    config = TrainerConfig.from_mapping(values)
    run = DeepSpeedRun(config, LMTask.from_mapping(values, False), torch.device("cpu"))
    result = ArmResult(dict(values), arm, None, plan.steps)
    window_end: int | None = None
    while run.step < plan.steps:
        run.train_step()
        run.after_step()
        if run.step % plan.eval_every:
            continue
        train = run.meter.reduce()["train_acc"]
        val = run.evaluate("val")["acc"]
        result.history.append((run.step, round(train, 4), round(val, 4)))
        if val >= plan.threshold:
            result.grok_step = run.step
            break
        if arm != "none" and result.kick_step is None and run.step >= plan.kick_step:
            _kick(arm, run, plan)
            result.kick_step, result.train_acc_at_kick = run.step, train
            window_end = run.step + (plan.sgd_steps if arm == "sgd_switch" else 0)
        elif window_end is not None and run.step >= window_end + plan.recover:
            assert result.train_acc_at_kick is not None
            if train < result.train_acc_at_kick - plan.forget_drop:
                result.forgot = True
                run.apply(ChannelCommand(1, ROLLBACK))
                restored = run.evaluate("val")  # the rollback point's model
                run.train_step()  # one step, so the meter reads the restored model's fit
                after = run.meter.reduce()["train_acc"]
                result.rollback_restored = after >= result.train_acc_at_kick - plan.forget_drop
                result.history.append((run.step, round(after, 4), round(restored["acc"], 4)))
            window_end = None  # judged once
    result.wall_s = round(time.monotonic() - started, 1)
    return result


def run_bench(
    configs: Sequence[Mapping[str, Any]], arms: Sequence[str], plan: Plan
) -> list[ArmResult]:
    results = []
    with single_process_group():
        for values in configs:
            for arm in arms:
                if arm == "lora_rank" and values.get("lm_lora_rank") is None:
                    continue
                result = _run_arm(values, arm, plan)
                print(
                    f"{_label(values)} {arm:10s} grok {result.grok_step} kick {result.kick_step} "
                    f"forgot {result.forgot} restored {result.rollback_restored} "
                    f"({result.wall_s:.0f} s)",
                    flush=True,
                )
                results.append(result)
    return results


def _label(values: Mapping[str, Any]) -> str:
    keys = ("lm_op", "lm_train_fraction", "lm_lora_rank", "weight_decay", "seed")
    return " ".join(f"{k.removeprefix('lm_')}={values.get(k)}" for k in keys)


def table(results: Sequence[ArmResult]) -> str:
    """Per arm: configs, grokked, median steps to grok (budget if never), median speed-up over
    ``none`` on the same config, worst speed-up, forgetting incidents, rollbacks that restored."""
    plain = {_label(r.config): r for r in results if r.arm == "none"}
    lines = [
        "| arm | configs | grokked | median steps to grok | median speed-up | worst speed-up "
        "| forgetting | rollbacks restored |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm in ARMS:
        rows = [r for r in results if r.arm == arm]
        if not rows:
            continue
        speedups = [
            plain[_label(r.config)].steps_to_grok / r.steps_to_grok
            for r in rows
            if _label(r.config) in plain
        ]
        forgot = [r for r in rows if r.forgot]
        restored = sum(1 for r in forgot if r.rollback_restored)
        # Without the `none` arm on a config (e.g. `--arms lora_rank`) there is nothing to compare.
        median, worst = (
            (f"{statistics.median(speedups):.2f}×", f"{min(speedups):.2f}×")
            if speedups
            else ("—", "—")
        )
        lines.append(
            f"| {arm} | {len(rows)} | {sum(r.grok_step is not None for r in rows)} "
            f"| {statistics.median(r.steps_to_grok for r in rows):,.0f} "
            f"| {median} | {worst} | {len(forgot)} | {restored}/{len(forgot)} |"
        )
    return "\n".join(lines)


def lm_kicks_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grokschedule bench lm-kicks", description=__doc__)
    parser.add_argument("--ops", nargs="+", default=["compose"], choices=["add", "compose"])
    parser.add_argument("--train-fractions", nargs="+", type=float, default=[0.5])
    parser.add_argument(
        "--lora-ranks", nargs="+", type=int, default=[4], help="0: full fine-tuning, no adapter"
    )
    parser.add_argument("--weight-decays", nargs="+", type=float, default=[1.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--kick-step", type=int, default=1000)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--rank-factor", type=int, default=4)
    parser.add_argument("--sgd-lr", type=float, default=0.05)
    parser.add_argument("--sgd-steps", type=int, default=300)
    parser.add_argument("--forget-drop", type=float, default=0.2)
    parser.add_argument("--recover", type=int, default=500)
    parser.add_argument("--tiny", action="store_true", help="two short runs, for tests")
    parser.add_argument("--out", type=Path, default=Path("lm_kicks.json"))
    args = parser.parse_args(argv)
    if args.tiny:
        args.steps, args.kick_step, args.eval_every, args.seeds = 40, 20, 10, [0]
        args.sgd_steps, args.recover = 10, 10
    plan = Plan(
        args.kick_step, args.steps, args.eval_every, args.threshold, args.rank_factor,
        args.sgd_lr, args.sgd_steps, args.forget_drop, args.recover,
    )  # fmt: skip
    if not 0 < plan.kick_step < plan.steps:
        parser.error(f"--kick-step must be in (0, --steps={plan.steps}), got {plan.kick_step}")
    configs = [
        {
            "task": "lm",
            "lm_op": op,
            "lm_perm_size": 4,
            "lm_p": 23,
            "lm_hidden": 64,
            "lm_layers": 2,
            "lm_train_fraction": fraction,
            "lm_lora_rank": rank or None,
            "weight_decay": wd,
            "lr": args.lr,
            "seed": seed,
            "num_workers": 1,
            "zero_stage": 2,
            "batch_size": 128,
            "micro_batch_size": 128,
            "max_steps": args.steps,
            "eval_every": args.eval_every,
        }
        for op in args.ops
        for fraction in args.train_fractions
        for rank in args.lora_ranks
        for wd in args.weight_decays
        for seed in args.seeds
    ]
    if args.tiny:
        for values in configs:
            values.update(lm_hidden=32, lm_layers=1, batch_size=32, micro_batch_size=32)
    results = run_bench(configs, args.arms, plan)
    args.out.write_text(
        json.dumps({"plan": asdict(plan), "results": [asdict(r) for r in results]}, indent=1)
    )
    print(table(results))
    return 0
