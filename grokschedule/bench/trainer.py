"""Throughput, MFU and peak memory of a ~1B Llama under DeepSpeed ZeRO-2/3 on one GPU, and
what grokschedule's monitoring costs against the same loop without it, in one run.

    python -m grokschedule.bench.trainer --stages 2 3 --out bench.json      # on an H100
    python -m grokschedule.bench.trainer --tiny                              # anywhere, seconds

Per ZeRO stage one engine is built and two loops alternate on it, ``--rounds`` times each, so
drift (clocks, other jobs) hits both alike:

- *plain*: forward, mean token cross-entropy, ``engine.backward``, ``engine.step`` — nothing else;
- *monitored*: ``DeepSpeedRun.train_step`` (per-example statistics accumulated on the device),
  and every ``--monitor-every`` steps what the trainer does at a report: poll the command
  source and broadcast, evaluate a probe set, the ZeRO-exact weight norm, reduce the metrics.

Tokens/s counts trained tokens only. MFU = 6·N·tokens/s + attention (12·layers·hidden·seq per
token, PaLM appendix B) over the GPU's dense bf16 peak (``--peak-tflops``, else from its name).
Data are random tokens: throughput does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from grokschedule.adapters.trainables.train_loop import (
    ScriptedCommands,
    poll_commands,
    report_metrics,
)
from grokschedule.training.deepspeed.config import TrainerConfig, prepare_cuda_build_env
from grokschedule.training.deepspeed.engine import DeepSpeedRun
from grokschedule.training.deepspeed.task import ExampleStats, Split

# Dense bf16 peak, TFLOP/s (vendor datasheets; SXM parts).
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}


@dataclass(frozen=True)
class ModelShape:
    vocab: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    seq: int


# 0.95B parameters: the baseline model of DESIGN.md (hidden 2048, 16 layers, untied 32k vocab).
LLAMA_1B = ModelShape(vocab=32_000, hidden=2048, layers=16, heads=16, intermediate=5632, seq=2048)
TINY = ModelShape(vocab=256, hidden=64, layers=2, heads=4, intermediate=128, seq=64)


class SyntheticLMTask:
    """Next-token prediction on random tokens, in the ``Task`` shape the trainer runs."""

    name = "synthetic-lm"

    def __init__(
        self, shape: ModelShape, examples: int, probe: int, activation_checkpointing: bool
    ) -> None:
        self.shape = shape
        self.activation_checkpointing = activation_checkpointing
        self.tokens_per_example = shape.seq
        generator = torch.Generator().manual_seed(0)
        tokens = torch.randint(shape.vocab, (examples + probe, shape.seq + 1), generator=generator)
        self._train = (tokens[:examples, :-1], tokens[:examples, 1:])
        self._probe = (tokens[examples:, :-1], tokens[examples:, 1:])

    def build_model(self) -> nn.Module:
        from transformers import LlamaConfig, LlamaForCausalLM

        s = self.shape
        config = LlamaConfig(
            vocab_size=s.vocab,
            hidden_size=s.hidden,
            intermediate_size=s.intermediate,
            num_hidden_layers=s.layers,
            num_attention_heads=s.heads,
            num_key_value_heads=s.heads,
            max_position_embeddings=s.seq,
            tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(config)
        if self.activation_checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": False})
        return model

    def train_split(self) -> Split:
        return self._train

    def eval_splits(self) -> dict[str, Split]:
        return {"probe": self._probe}

    def stats(
        self, model: Callable[..., Any], inputs: torch.Tensor, targets: torch.Tensor
    ) -> ExampleStats:
        logits = model(input_ids=inputs).logits.float()
        token_loss = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        loss = token_loss.mean(1)
        return ExampleStats(
            loss=loss,
            correct=(logits.detach().argmax(-1) == targets).all(1),
            correct_prob=torch.exp(-token_loss.detach()).mean(1),
            zero_loss=loss.detach() == 0,
        )


def plain_step(run: DeepSpeedRun, step: int) -> None:
    """The reference loop: the same engine, batches and loss, no statistics, no monitoring."""
    engine = run.engine
    engine.train()
    x, y = run.task.train_split()
    micro = run.config.micro_batch_size
    accumulation = engine.gradient_accumulation_steps()
    for m in range(accumulation):
        start = ((step * accumulation + m) * micro) % (len(x) - micro + 1)
        inputs, targets = x[start : start + micro].to(run.device), y[start : start + micro]
        logits = engine(input_ids=inputs).logits.float()
        loss = F.cross_entropy(logits.transpose(1, 2), targets.to(run.device))
        engine.set_gradient_accumulation_boundary(m == accumulation - 1)
        engine.backward(loss)
    engine.step()


def monitored_step(run: DeepSpeedRun, every: int) -> None:
    if run.step % every == 0:
        for command in poll_commands(ScriptedCommands({}), run.step):
            run.apply(command)
    run.train_step()
    run.after_step()
    if run.step % every == 0:
        report_metrics(run)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_memory_gib() -> float:
    """Peak GPU memory allocated since the last reset, or the process's peak RSS on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def flops_per_token(n_params: int, shape: ModelShape) -> float:
    return 6.0 * n_params + 12.0 * shape.layers * shape.hidden * shape.seq


def peak_flops(override_tflops: float | None) -> float | None:
    if override_tflops is not None:
        return override_tflops * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((t * 1e12 for key, t in PEAK_TFLOPS.items() if key in name), None)


def timed(loop: Callable[[int], None], steps: int, first: int) -> float:
    synchronize()
    started = time.perf_counter()
    for step in range(first, first + steps):
        loop(step)
    synchronize()
    return time.perf_counter() - started


def bench_stage(args: argparse.Namespace, shape: ModelShape, stage: int) -> dict[str, Any]:
    use_gpu = torch.cuda.is_available()
    config = TrainerConfig(
        task="lm",
        num_workers=1,
        use_gpu=use_gpu,
        zero_stage=stage,
        precision=args.precision or ("bf16" if use_gpu else "fp32"),
        batch_size=args.micro_batch * args.accumulation,
        micro_batch_size=args.micro_batch,
        lr=1e-4,
        weight_decay=0.1,
        grad_clip=1.0,
        activation_checkpointing=args.activation_checkpointing,
        eval_batch_size=args.micro_batch,
        max_steps=10**9,
    )
    task = SyntheticLMTask(
        shape, 8 * config.batch_size, 2 * args.micro_batch, args.activation_checkpointing
    )
    device = torch.device("cuda", torch.cuda.current_device()) if use_gpu else torch.device("cpu")
    run = DeepSpeedRun(config, task, device)
    # ZeRO-3 leaves each parameter a stub; ds_numel is its full size.
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in run.engine.module.parameters())
    timed(lambda s: plain_step(run, s), args.warmup, 0)
    timed(lambda s: monitored_step(run, args.monitor_every), args.warmup, 0)
    if use_gpu:
        torch.cuda.reset_peak_memory_stats()
    seconds = {"plain": 0.0, "monitored": 0.0}
    for r in range(args.rounds):
        first = args.warmup + r * args.steps
        seconds["plain"] += timed(lambda s: plain_step(run, s), args.steps, first)
        seconds["monitored"] += timed(
            lambda s: monitored_step(run, args.monitor_every), args.steps, first
        )
    tokens = args.rounds * args.steps * config.batch_size * shape.seq
    peak = peak_flops(args.peak_tflops)
    result: dict[str, Any] = {
        "zero_stage": stage,
        "precision": config.precision,
        "params": n_params,
        "micro_batch": args.micro_batch,
        "accumulation": args.accumulation,
        "peak_memory_gib": peak_memory_gib(),
        "device": torch.cuda.get_device_name() if use_gpu else "cpu",
    }
    for name, s in seconds.items():
        rate = tokens / s
        result[f"{name}_tokens_per_s"] = rate
        result[f"{name}_mfu"] = (
            None if peak is None else rate * flops_per_token(n_params, shape) / peak
        )
    result["monitoring_overhead"] = 1.0 - seconds["plain"] / seconds["monitored"]
    run.engine.destroy()
    return result


def init_single_process() -> None:
    """A one-rank process group, as DeepSpeed expects, if nothing set one up."""
    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0",
                       "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():  # fmt: skip
        os.environ.setdefault(key, value)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=0, world_size=1)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="grokschedule.bench.trainer", description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="a 0.1M-param model (CPU, tests)")
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 3], choices=[2, 3])
    parser.add_argument("--precision", choices=["bf16", "fp32"], default=None)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--seq", type=int, default=None, help="sequence length (default 2048)")
    parser.add_argument("--steps", type=int, default=10, help="steps per loop per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--monitor-every", type=int, default=10, help="steps between reports")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.steps % args.monitor_every:
        # Then every timed window holds the same number of reports.
        parser.error(f"--steps {args.steps} must be a multiple of --monitor-every")
    return args


def trainer_bench_main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark; returns one result per ZeRO stage (also printed, and written to
    ``--out``)."""
    args = parse_args(argv)
    shape = TINY if args.tiny else LLAMA_1B
    if args.seq is not None:
        shape = ModelShape(**{**asdict(shape), "seq": args.seq})
    if torch.cuda.is_available():
        prepare_cuda_build_env()
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    init_single_process()
    results = [bench_stage(args, shape, stage) for stage in args.stages]
    for r in results:
        mfu = (
            "" if r["plain_mfu"] is None else f", MFU {r['plain_mfu']:.2f}/{r['monitored_mfu']:.2f}"
        )
        print(
            f"ZeRO-{r['zero_stage']} {r['precision']} {r['params'] / 1e6:,.1f}M params "
            f"on {r['device']}: "
            f"{r['plain_tokens_per_s']:,.0f} tokens/s plain, {r['monitored_tokens_per_s']:,.0f} "
            f"monitored ({100 * r['monitoring_overhead']:+.1f}%){mfu}, "
            f"peak {r['peak_memory_gib']:.1f} GiB"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    trainer_bench_main()
