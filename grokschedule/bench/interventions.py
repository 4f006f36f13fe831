"""Do kicks shorten grokking? The same runs (configs and seeds) with and without interventions.

No Ray: every run is a ``ModularTrainer`` driven in-process, and commands go straight to
``ModularTrainer.apply_command`` right after the evaluation that prompted them, which is where the
live channel delivers them too (the trainable polls right after each report). The decisions are
the product's: ``GrokPolicy`` with interventions (``PolicyDecide``, configured by
``bench_policy``), fed what a scheduler sees — the reported metrics, the ``control/*``
acknowledgements, and ``control/weight_decay``, the optimizer's current weight decay. A STOP
before grokking ends the run, as it would end the trial. With ``--workers`` > 1 each run gets
its own copy of the policy, so the kick-kind bandit does not learn across runs there; with
``--workers 1`` it does, in grid order, and with ``--lockstep`` the runs go side by side (one
evaluation each in turn), as a sweep's concurrent trials do, so every run reaches its plateau
before a kick is judged: the case the probe cohort (``--probe-trials``) is for.

Kinds of run:

- ``adamw``: no intervention (the baseline);
- ``policy``: GrokPolicy's KICK / ROLLBACK commands;
- ``grokfast``: Grokfast-EMA (alpha 0.98, lamb 2) switched on at step 0 (its paper's use);
- ``grokfast_late``: the same filter switched on only once the training set is memorized.

Per kind: steps to grok (first evaluation with ``val_acc`` ≥ 0.95), the median speed-up against
``adamw`` over the runs where both grok, the same median as a lower bound over every run the kind
groks (an ``adamw`` run that never groks counted at the budget), runs that grok only with the
intervention, runs lost to it (``adamw`` groks, it does not), kicks, rollbacks and forgetting
incidents (an accuracy, train or validation, falling ``FORGET_DROP`` below its best once that
best is ≥ 0.5) and runs the policy stopped before they grokked. Runs stop ``tail`` steps after
grokking, so forgetting after it is seen too.

    python -m grokschedule.bench.interventions --output interventions.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import statistics
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from grokschedule.core.commands import KICK, Command
from grokschedule.core.contract import CONTROL_WEIGHT_DECAY, Observation
from grokschedule.core.decision import Decision, DecisionKind
from grokschedule.core.kick_policy import KickConfig
from grokschedule.core.kicks import Kick
from grokschedule.core.policy import GrokPolicy, PolicyConfig
from grokschedule.training.modular.trainer import ModularTrainer, TrainConfig

GROK_THRESHOLD = 0.95
MEMORIZED = 0.99  # train accuracy that counts as the training set memorized
FORGET_DROP = 0.2
KIND_NAMES = ("adamw", "policy", "grokfast", "grokfast_late")
GROKFAST = Kick("grokfast", {"alpha": 0.98, "lamb": 2.0}, reason="reference: Grokfast-EMA")


class PolicyDecide:
    """The product's decisions: ``GrokPolicy`` with interventions (``KickConfig``), fed the
    metrics a scheduler sees, ``control/*`` acknowledgements included. Returns the decision;
    ``run_one`` posts its command and honours a STOP before grokking (the trial would end)."""

    def __init__(self, config: PolicyConfig) -> None:
        if config.interventions is None:
            raise ValueError("PolicyDecide needs a PolicyConfig with interventions")
        self.policy = GrokPolicy(config)

    def __call__(self, trial_id: str, metrics: Mapping[str, float]) -> Decision:
        return self.policy.observe(trial_id, Observation.from_result(metrics))


Decide = Callable[[str, Mapping[str, float]], Decision]

# Kicks for the benchmark's policy, in the order they are tried (KickPolicy tries kinds the sweep
# has not judged in this order). A weight-decay raise to at most 1.0 (``max_weight_decay``) first:
# it only fits weak-decay runs, which it turns into strong-decay ones for 1000 steps. Then ⊥Grad
# (arXiv 2501.04697), which stops the loss falling by merely scaling the weights up, the road to
# softmax collapse: under strong decay a 250-step window groks a run within a few hundred steps,
# while a permanent one made runs forget. Last lr × 3 for 1000 steps, 3× the decoupled decay
# rate lr·wd. A 300-step cooldown lets each act: stacking all three at once groked some runs
# sooner and made others forget (probes on p 47/53, train fraction 0.4).
BENCH_KICKS = (
    Kick("weight_decay", {"factor": 10.0}, 1000),
    Kick("ortho_grad", duration_steps=250),
    Kick("lr_multiply", {"factor": 3.0}, 1000),
)


def bench_policy(
    settings: BenchSettings, kicks: Sequence[Kick] = BENCH_KICKS, **kick_options: Any
) -> PolicyConfig:
    """The policy the benchmark runs: kick as soon as the plateau is quiet right after
    memorization (``kick_at`` × ``min_patience`` = one evaluation), one kind at a time.
    ``kick_options``: other ``KickConfig`` fields (``probe_trials``, ``first``, ...)."""
    return PolicyConfig(
        metric="val_acc",
        mode="max",
        grok_threshold=GROK_THRESHOLD,
        max_t=settings.steps,
        min_patience=settings.steps / 3,
        patience_factor=5.0,
        phases={"warmup_results": 1},
        stop_on_grok=False,  # the run goes on for ``tail`` steps to catch forgetting
        interventions=KickConfig(
            kicks=tuple(kicks),
            max_kicks=len(kicks),
            kick_at=settings.eval_every / (settings.steps / 3),
            cooldown=6 * settings.eval_every,
            max_weight_decay=1.0,
            rollback_window=2 * settings.eval_every,
            **({"first": ()} | kick_options),
        ),
    )


@dataclass(frozen=True)
class RunSpec:
    p: int
    train_fraction: float
    weight_decay: float
    seed: int
    kind: str

    @property
    def trial_id(self) -> str:
        return f"p{self.p}-f{self.train_fraction}-wd{self.weight_decay}-s{self.seed}"


@dataclass(frozen=True)
class RunResult:
    spec: RunSpec
    grok_step: int | None
    memorized_step: int | None
    steps: int
    final_val_acc: float
    kicks: int
    rollbacks: int
    forgetting: int
    seconds: float
    stopped: str = ""  # the policy's STOP reason, when it ended the run before grokking
    kick_log: tuple[str, ...] = ()  # "step: KICK/ROLLBACK reason" for each command


@dataclass(frozen=True)
class BenchSettings:
    steps: int = 3_000
    eval_every: int = 50
    tail: int = 300  # steps trained past grokking, to catch forgetting
    lr: float = 3e-3
    embed_dim: int = 64
    hidden_dim: int = 256


class _Forgetting:
    """Counts drops of ``FORGET_DROP`` below the best accuracy (once ≥ 0.5), once per drop."""

    def __init__(self) -> None:
        self.best = {"train_acc": 0.0, "val_acc": 0.0}
        self.down = dict.fromkeys(self.best, False)
        self.incidents = 0

    def update(self, metrics: Mapping[str, float]) -> None:
        for key, best in self.best.items():
            value = metrics[key]
            down = best >= 0.5 and value < best - FORGET_DROP
            self.incidents += down and not self.down[key]
            self.down[key] = down
            self.best[key] = max(best, value)


def run_one(spec: RunSpec, settings: BenchSettings, decide: Decide | None = None) -> RunResult:
    """Train one run of ``spec.kind``; stops ``settings.tail`` steps after it groks. ``decide``
    (default: ``PolicyDecide(bench_policy(settings))``) is used for ``policy`` runs."""
    steps = _steps(spec, settings, decide)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: RunResult = done.value
            return result


def _steps(
    spec: RunSpec, settings: BenchSettings, decide: Decide | None
) -> Generator[None, None, RunResult]:
    """``run_one`` one evaluation at a time (it yields after each), so runs can be interleaved
    as a sweep's concurrent trials are; returns the result."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    config = TrainConfig(
        p=spec.p,
        train_fraction=spec.train_fraction,
        seed=spec.seed,
        lr=settings.lr,
        weight_decay=spec.weight_decay,
        embed_dim=settings.embed_dim,
        hidden_dim=settings.hidden_dim,
        max_steps=settings.steps,
        eval_every=settings.eval_every,
    )
    trainer = ModularTrainer(config)
    pending: list[Mapping[str, Any]] = []
    kicks = 0

    def poll(_step: int) -> list[Mapping[str, Any]]:
        nonlocal kicks
        delivered = pending[:]
        pending.clear()
        kicks += sum(command["type"] == KICK for command in delivered)
        return delivered

    if spec.kind == "grokfast":
        pending.append(Command(0, KICK, GROKFAST).to_dict())
    if spec.kind == "policy" and decide is None:
        decide = PolicyDecide(bench_policy(settings))
    grok_step = memorized_step = None
    stopped, kick_log = "", []
    forgetting = _Forgetting()
    metrics: dict[str, float] = {}
    for metrics in trainer.run(poll):
        metrics.update(trainer.control_metrics())
        metrics[CONTROL_WEIGHT_DECAY] = float(trainer.optimizer.param_groups[0]["weight_decay"])
        forgetting.update(metrics)
        step = int(metrics["step"])
        if memorized_step is None and metrics["train_acc"] >= MEMORIZED:
            memorized_step = step
            if spec.kind == "grokfast_late":
                pending.append(Command(0, KICK, GROKFAST).to_dict())
        if grok_step is None and metrics["val_acc"] >= GROK_THRESHOLD:
            grok_step = step
        if spec.kind == "policy" and decide is not None:
            decision = decide(spec.trial_id, metrics)
            if decision.command is not None:
                pending.append(decision.command.to_dict())  # as the live channel sends it
                kick_log.append(f"{step}: {decision.kind.value} {decision.reason}")
            if decision.kind is DecisionKind.STOP and grok_step is None and step < config.max_steps:
                stopped = f"{step}: {decision.reason}"
                break
        if grok_step is not None and step >= grok_step + settings.tail:
            break
        yield
    return RunResult(
        spec=spec,
        grok_step=grok_step,
        memorized_step=memorized_step,
        steps=trainer.step,
        final_val_acc=metrics["val_acc"],
        kicks=kicks,
        rollbacks=trainer.control.rollbacks,
        forgetting=forgetting.incidents,
        seconds=time.perf_counter() - start,
        stopped=stopped,
        kick_log=tuple(kick_log),
    )


def run_lockstep(
    specs: Sequence[RunSpec], settings: BenchSettings, decide: Decide
) -> list[RunResult]:
    """All runs in one process, one evaluation each in turn, sharing ``decide``: as a sweep's
    trials run side by side, so every run reaches its plateau before any kick is judged."""
    running = {i: _steps(spec, settings, decide) for i, spec in enumerate(specs)}
    results: dict[int, RunResult] = {}
    while running:
        for i, steps in list(running.items()):
            try:
                next(steps)
            except StopIteration as done:
                results[i] = done.value
                del running[i]
    return [results[i] for i in range(len(specs))]


def run_grid(
    specs: Sequence[RunSpec],
    settings: BenchSettings,
    decide: Decide | None,
    workers: int,
    lockstep: bool = False,
) -> list[RunResult]:
    """All runs, ``workers`` processes at a time (each one torch thread). In one process the
    policy runs share one ``decide``, so the kick-kind bandit learns across them: one run after
    the other, or with ``lockstep`` side by side (``run_lockstep``)."""
    if lockstep:
        shared = decide or PolicyDecide(bench_policy(settings))
        return run_lockstep(specs, settings, shared)
    if workers <= 1:
        shared = decide or PolicyDecide(bench_policy(settings))
        return [run_one(spec, settings, shared) for spec in specs]
    context = multiprocessing.get_context("spawn")  # no forked torch thread pools
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(run_one, spec, settings, decide) for spec in specs]
        return [future.result() for future in futures]


def summarize(results: Sequence[RunResult], budget: int) -> list[dict[str, Any]]:
    """One row per kind, compared run by run with ``adamw`` on the same config and seed;
    ``budget`` is the step limit, counted for adamw runs that never grok in the lower bound."""
    baseline = {r.spec.trial_id: r for r in results if r.spec.kind == "adamw"}
    rows = []
    for kind in dict.fromkeys(r.spec.kind for r in results):
        runs = [r for r in results if r.spec.kind == kind]
        grokked = [r.grok_step for r in runs if r.grok_step is not None]
        pairs = [(baseline.get(r.spec.trial_id), r) for r in runs]
        ratios = [
            base.grok_step / r.grok_step
            for base, r in pairs
            if base is not None and base.grok_step is not None and r.grok_step is not None
        ]
        # A lower bound over every run this kind groks: adamw's never is counted as the budget.
        bounds = [
            (base.grok_step or budget) / r.grok_step
            for base, r in pairs
            if base is not None and r.grok_step is not None
        ]
        rows.append(
            {
                "kind": kind,
                "runs": len(runs),
                "grokked": len(grokked),
                "median_steps_to_grok": statistics.median(grokked) if grokked else None,
                "speedup_median": statistics.median(ratios) if ratios else None,
                "speedup_pairs": len(ratios),
                "speedup_lower_bound_median": statistics.median(bounds) if bounds else None,
                "grok_only_with": sum(
                    base is not None and base.grok_step is None and r.grok_step is not None
                    for base, r in pairs
                ),
                "lost": sum(
                    base is not None and base.grok_step is not None and r.grok_step is None
                    for base, r in pairs
                ),
                "kicks": sum(r.kicks for r in runs),
                "rollbacks": sum(r.rollbacks for r in runs),
                "forgetting": sum(r.forgetting for r in runs),
                "stopped": sum(bool(r.stopped) for r in runs),
            }
        )
    return rows


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    header = (
        "| kind | grokked | median steps to grok | median speed-up, both grok (pairs) "
        "| median speed-up ≥, adamw never = budget "
        "| grok only with it | lost | kicks | rollbacks | forgetting | stopped |"
    )
    lines = [header, "|" + "---|" * 11]
    for row in rows:
        steps = row["median_steps_to_grok"]
        speedup, bound = row["speedup_median"], row["speedup_lower_bound_median"]
        lines.append(
            f"| {row['kind']} | {row['grokked']}/{row['runs']} "
            f"| {'—' if steps is None else f'{steps:g}'} "
            f"| {'—' if speedup is None else f'{speedup:.2f}×'} ({row['speedup_pairs']}) "
            f"| {'—' if bound is None else f'≥ {bound:.2f}×'} "
            f"| {row['grok_only_with']} | {row['lost']} | {row['kicks']} | {row['rollbacks']} "
            f"| {row['forgetting']} | {row['stopped']} |"
        )
    return "\n".join(lines)


def interventions_bench_main(
    argv: Sequence[str] | None = None, decide: Decide | None = None
) -> int:
    """Run the grid, print the Markdown table, write every run and the summary as JSON.
    ``decide`` defaults to ``PolicyDecide(bench_policy(settings))``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--p", type=int, nargs="+", default=[47, 53])
    parser.add_argument("--train-fraction", type=float, nargs="+", default=[0.4, 0.5])
    parser.add_argument("--weight-decay", type=float, nargs="+", default=[1.0, 0.1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--kinds", nargs="+", choices=KIND_NAMES, default=list(KIND_NAMES))
    parser.add_argument("--steps", type=int, default=BenchSettings.steps)
    parser.add_argument("--eval-every", type=int, default=BenchSettings.eval_every)
    parser.add_argument("--tail", type=int, default=BenchSettings.tail)
    parser.add_argument("--lr", type=float, default=BenchSettings.lr)
    parser.add_argument("--embed-dim", type=int, default=BenchSettings.embed_dim)
    parser.add_argument("--hidden-dim", type=int, default=BenchSettings.hidden_dim)
    parser.add_argument("--workers", type=int, default=min(2, multiprocessing.cpu_count()))
    parser.add_argument("--output", type=Path, default=Path("interventions_bench.json"))
    parser.add_argument(
        "--product-kicks",
        action="store_true",
        help="the product's default kicks and first-kick rules instead of the bench's own",
    )
    parser.add_argument(
        "--probe-trials",
        type=int,
        default=0,
        help="KickConfig.probe_trials: trials kicked before the sweep's first verdict (0: all)",
    )
    parser.add_argument(
        "--lockstep",
        action="store_true",
        help="run every run side by side in one process (as a sweep's trials), one shared policy",
    )
    args = parser.parse_args(argv)
    if args.probe_trials < 0:
        parser.error(f"--probe-trials must be >= 0, got {args.probe_trials}")
    if "adamw" not in args.kinds:
        parser.error("--kinds needs adamw: every other kind is compared with it")
    settings = BenchSettings(
        steps=args.steps,
        eval_every=args.eval_every,
        tail=args.tail,
        lr=args.lr,
        embed_dim=args.embed_dim,
        hidden_dim=args.hidden_dim,
    )
    specs = [
        RunSpec(p, fraction, wd, seed, kind)
        for p, fraction, wd, seed, kind in itertools.product(
            args.p, args.train_fraction, args.weight_decay, args.seeds, args.kinds
        )
    ]
    if decide is None:
        options: dict[str, Any] = {"probe_trials": args.probe_trials}
        kicks: Sequence[Kick] = BENCH_KICKS
        if args.product_kicks:
            kicks, options["first"] = KickConfig().kicks, KickConfig().first
        decide = PolicyDecide(bench_policy(settings, kicks, **options))
    start = time.perf_counter()
    results = run_grid(specs, settings, decide, args.workers, args.lockstep)
    rows = summarize(results, settings.steps)
    print(markdown_table(rows))
    print(f"\n{len(results)} runs in {time.perf_counter() - start:.0f} s")
    args.output.write_text(
        json.dumps(
            {
                "settings": asdict(settings),
                "summary": rows,
                "runs": [asdict(r) for r in results],
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(interventions_bench_main())
