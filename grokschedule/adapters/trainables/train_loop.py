"""The per-worker Ray Train loop: restore, train, report the metric contract, checkpoint, and
apply commands from a control channel between optimizer steps.

Every rank runs this function. All ranks report (Train V2's ``report`` is collective) the same
all-reduced metrics; ``TuneReportCallback`` forwards rank 0's to Tune. Checkpoints are DeepSpeed
checkpoints: every rank saves its shard into its own directory and reports it, and Ray merges
them into one checkpoint directory in the run's storage. Each rank seals its own part with a
manifest; on resume the ranks agree on the newest checkpoint that all of them verify.

With the live control channel (``ChannelCommands``, config ``control=True`` under Tune) every
report carries the ``control/*`` acknowledgements the scheduler reads, and the first report after
a command carries a checkpoint, so the rollback point taken before a kick survives a restart,
inside an sgd_switch window too; until then the channel keeps the command for a worker group
that Train restarts (a rank killed), which resumes from an older checkpoint and applies it once.
A run with a LoRA adapter reports its rank in force (``control/lora_rank``, grown by a lora_rank
kick) and the largest its layers allow (``control/lora_rank_limit``), on either path.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch

from grokschedule.adapters.trainables.commands import COMMANDS_KEY, ChannelCommands
from grokschedule.core.contract import CONTROL_LORA_RANK, CONTROL_LORA_RANK_LIMIT
from grokschedule.training.checkpoints import load_agreed
from grokschedule.training.deepspeed.config import (
    TrainerConfig,
    check_hardware,
    prepare_cuda_build_env,
)
from grokschedule.training.deepspeed.engine import DeepSpeedRun
from grokschedule.training.deepspeed.registry import build_task
from grokschedule.training.deepspeed.reporting import (
    CommandSource,
    poll_commands,
    report_metrics,
)
from grokschedule.training.deepspeed.trainer_probes import TrainerProbes


def device_for(config: TrainerConfig) -> torch.device:
    if not config.use_gpu:
        return torch.device("cpu")
    device = ray.train.torch.get_device()
    torch.cuda.set_device(device)
    return device


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Train one trial on this worker; ``loop_config`` is the trial's flat config."""
    config = TrainerConfig.from_mapping(loop_config)
    torch.set_num_threads(config.torch_threads)
    check_hardware(config)
    if config.use_gpu:
        prepare_cuda_build_env()
    device = device_for(config)
    task = build_task(config.task, loop_config, config.activation_checkpointing)
    source: CommandSource | None = loop_config.get(COMMANDS_KEY)

    # Every rank verifies the latest checkpoint and, if any rank rejects it, all fall back
    # together to the newest earlier one all accept (``load_agreed``), or start fresh.
    run = load_agreed(
        ray.train.get_checkpoint(),
        lambda directory: DeepSpeedRun.restore(config, task, device, directory),
        device,
    )
    if run is None:
        run = DeepSpeedRun(config, task, device)

    if isinstance(source, ChannelCommands):
        source.client.acknowledged(run.control.acked_id)  # a restored run's commands stay done
    checkpointed_ack = run.control.acked_id
    probes = None
    if config.probe_every is not None:
        probes = TrainerProbes(config.probe_every, config.probe_budget)
    started, examples = time.perf_counter(), 0  # throughput between reports, without them
    while run.step < config.max_steps:
        if run.step % config.poll_every == 0:
            for command in poll_commands(source, run.step):
                run.apply(command)
        examples += run.batch_size
        step_started = time.perf_counter()
        run.train_step()
        if probes is not None:
            probes.step_done(time.perf_counter() - step_started)
        run.after_step()
        if run.step % config.eval_every and run.step != config.max_steps:
            continue
        if config.use_gpu:
            torch.cuda.synchronize()  # count the kernels queued so far, not just their launch
        tokens_per_s = examples * run.task.tokens_per_example / (time.perf_counter() - started)
        metrics = {**report_metrics(run, probes), "tokens_per_s": tokens_per_s}
        if run.adapter_rank is not None:  # the kick policy grows a LoRA rank only within these
            metrics[CONTROL_LORA_RANK] = run.adapter_rank
            metrics[CONTROL_LORA_RANK_LIMIT] = run.adapter_rank_limit
        if isinstance(source, ChannelCommands):  # rank 0 polls: its count is the one reported
            metrics.update(run.control_metrics())
            metrics.update(source.client.metrics())
        every = config.checkpoint_every
        due = every and (run.step % every == 0 or run.step == config.max_steps)
        if due or (every and run.control.acked_id != checkpointed_ack):
            checkpointed_ack = run.control.acked_id
            with tempfile.TemporaryDirectory() as directory:
                run.save(Path(directory))
                checkpoint = ray.train.Checkpoint.from_directory(directory)
                ray.train.report(metrics, checkpoint=checkpoint)
            if isinstance(source, ChannelCommands):  # the channel may forget what it holds
                source.client.checkpointed(checkpointed_ack)
        else:
            ray.train.report(metrics)
        started, examples = time.perf_counter(), 0
