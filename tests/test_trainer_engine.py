"""DeepSpeedRun on a real DeepSpeed engine in this process (gloo, one rank): kicks in place,
the SGD switch by rebuild, checkpoints, and metrics that are exact under ZeRO-3."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from ray.train import Checkpoint

from grokschedule.core.commands import Command as ChannelCommand
from grokschedule.core.commands import ControlState
from grokschedule.core.kicks import Kick
from grokschedule.training.checkpoints import CorruptCheckpointError, load_agreed, verify_sharded
from grokschedule.training.deepspeed.config import TrainerConfig
from grokschedule.training.deepspeed.engine import DeepSpeedRun, SetAdapterRank
from grokschedule.training.deepspeed.task import ModularDeepSpeedTask

pytestmark = pytest.mark.slow

CPU = torch.device("cpu")
TASK = {"p": 23, "embed_dim": 32, "hidden_dim": 64, "train_fraction": 0.5}


def make_run(**overrides: object) -> DeepSpeedRun:
    values = {"num_workers": 1, "batch_size": 32, "micro_batch_size": 16, "lr": 3e-3, **overrides}
    config = TrainerConfig.from_mapping({**TASK, **values})
    return DeepSpeedRun(config, ModularDeepSpeedTask(TASK), torch.device("cpu"))


def train(run: DeepSpeedRun, steps: int) -> list:
    records = []
    for _ in range(steps):
        run.train_step()
        records += run.after_step()
    return records


def adam_moments(run: DeepSpeedRun) -> list[torch.Tensor]:
    optimizer = run.engine.optimizer
    inner = getattr(optimizer, "optimizer", optimizer)  # ZeRO wraps torch's AdamW
    return [state["exp_avg"].clone() for state in inner.state.values()]


@pytest.mark.parametrize(("stage", "precision"), [(0, "fp32"), (2, "bf16"), (3, "fp32")])
def test_kicks_apply_in_place_and_the_sgd_switch_keeps_adamw_state(
    process_group: None, tmp_path: Path, stage: int, precision: str
) -> None:
    run = make_run(zero_stage=stage, precision=precision)
    train(run, 3)
    builds = run.engine_builds

    record = run.apply_kick(Kick("lr_multiply", {"factor": 0.5}, duration_steps=2))
    assert record.changes["lr"] == ((3e-3,), (1.5e-3,)) and run.lr == 1.5e-3
    record = run.apply_kick(Kick("batch_size", {"factor": 2}))
    assert record.changes["accumulation_steps"] == (2, 4)
    assert run.engine.train_batch_size() == 64 and run.batch_size == 64
    reverts = train(run, 2)
    assert [r.kick.kind for r in reverts] == ["lr_multiply"] and run.lr == 3e-3
    assert run.engine_builds == builds  # lr and batch size changed without a new engine

    moments, norm = adam_moments(run), run.weight_norm()
    record = run.apply_kick(Kick("sgd_switch", {"lr": 1e-2, "momentum": 0.5}, duration_steps=2))
    assert record.changes["optimizer"] == ("adamw", "sgd") and run.lr == 1e-2
    assert run.weight_norm() == norm  # same weights, new optimizer
    reverts = train(run, 2)
    assert reverts[0].changes["optimizer"] == ("sgd", "adamw") and run.lr == 3e-3
    assert run.engine_builds == builds + 2 and run.weight_norm() != norm
    assert all(torch.equal(a, b) for a, b in zip(moments, adam_moments(run), strict=True))
    assert run.engine.gradient_accumulation_steps() == 4  # the batch kick survived the rebuilds

    run.save(tmp_path)
    restored = DeepSpeedRun.restore(run.config, run.task, run.device, tmp_path)
    assert (restored.step, restored.batch_size, restored.lr) == (run.step, 64, 3e-3)
    assert restored.weight_norm() == run.weight_norm()
    assert restored.evaluate("val") == run.evaluate("val")
    train(run, 1)
    train(restored, 1)  # same batches, same optimizer state: the same next step
    assert restored.weight_norm() == pytest.approx(run.weight_norm(), rel=1e-6)


@pytest.mark.parametrize("stage", [1, 2])
def test_channel_kick_is_acknowledged_and_rollback_restores_the_point_across_a_restart(
    process_group: None, tmp_path: Path, stage: int
) -> None:
    run = make_run(zero_stage=stage)
    train(run, 3)
    norm, moments = run.weight_norm(), adam_moments(run)
    harmful = Kick("lr_multiply", {"factor": 1000.0}, duration_steps=50)
    record = run.apply(ChannelCommand(0, "kick", harmful))
    assert record is not None and run.lr == pytest.approx(3.0)
    assert run.control == ControlState(acked_id=0, applied_step=3, rollbacks=0)
    train(run, 2)
    assert run.weight_norm() != norm

    # A worker restart between the kick and the rollback: the point travels in the checkpoint.
    run.save(tmp_path)
    restored = DeepSpeedRun.restore(run.config, run.task, run.device, tmp_path)
    assert restored.control == run.control and "lr_multiply" in restored.active
    with pytest.raises(ValueError, match="not newer"):
        restored.apply(ChannelCommand(0, "rollback"))
    restored.apply(ChannelCommand(1, "rollback"))
    assert restored.control == ControlState(acked_id=1, applied_step=5, rollbacks=1)
    assert restored.step == 5 and not restored.active and restored.lr == 3e-3
    assert restored.weight_norm() == pytest.approx(norm, rel=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(moments, adam_moments(restored), strict=True))
    with pytest.raises(ValueError, match="no kick since the last rollback"):
        restored.apply(ChannelCommand(2, "rollback"))


def test_rollback_out_of_an_sgd_switch_restores_adamw(process_group: None) -> None:
    run = make_run(zero_stage=2)
    train(run, 2)
    run.apply(ChannelCommand(0, "kick", Kick("lr_multiply", {"factor": 2.0}, duration_steps=10)))
    train(run, 1)
    norm = run.weight_norm()
    run.apply(ChannelCommand(1, "kick", Kick("sgd_switch", {"lr": 0.5}, duration_steps=10)))
    train(run, 2)
    assert run.optimizer_name == "sgd"
    run.apply(ChannelCommand(2, "rollback"))  # back to just before the switch, lr kick in force
    assert run.optimizer_name == "adamw" and run.lr == pytest.approx(6e-3)
    assert run.active["lr_multiply"].start == 2 + 2  # its window moved by the 2 steps undone
    assert run.weight_norm() == pytest.approx(norm, rel=1e-6)
    train(run, 1)
    assert math.isfinite(run.meter.reduce()["train_loss"])


def weights(run: DeepSpeedRun) -> list[torch.Tensor]:
    return [p.detach().clone() for p in run.engine.module.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_a_checkpoint_inside_an_sgd_window_carries_the_window_adamw_and_the_rollback_point(
    process_group: None, tmp_path: Path
) -> None:
    """A worker restarted from a checkpoint inside an AdamW→SGD window, with a rollback point
    taken inside it, does what the uninterrupted run does: finishes the window, switches back to
    the AdamW moments set aside at the switch, and rolls back to the point (then switches back
    once more), also when restarted again after the window with the point still pending."""
    runs = {name: make_run(zero_stage=2) for name in ("uninterrupted", "restarted")}
    for run in runs.values():
        train(run, 2)
        home = adam_moments(run)  # the same in both runs
        run.apply_kick(Kick("sgd_switch", {"lr": 1e-2, "momentum": 0.5}, duration_steps=4))
        train(run, 1)
        point = weights(run)
        run.apply(ChannelCommand(0, "kick", Kick("lr_multiply", {"factor": 2.0}, 10)))
        train(run, 1)
    reference, run = runs["uninterrupted"], runs["restarted"]

    run.save(tmp_path / "checkpoint_000000")  # step 4, two steps of the window left
    manifest = json.loads((tmp_path / "checkpoint_000000/manifest.rank0.json").read_text())
    kept = {name.split("/")[0] for name in manifest["files"]}
    assert {"checkpoint", "switch", "rollback"} <= kept and "rollback_switch" not in kept
    run = load_agreed(Checkpoint(str(tmp_path / "checkpoint_000000")), restore_from(run), CPU)
    assert (run.step, run.optimizer_name, run.lr) == (4, "sgd", reference.lr) == (4, "sgd", 2e-2)
    assert same(weights(run), weights(reference))

    for each in (reference, run):
        (revert,) = [r for r in train(each, 2) if r.kick.kind == "sgd_switch"]
        assert revert.step == 6 and each.optimizer_name == "adamw"
        assert same(adam_moments(each), home)  # AdamW's moments as they were set aside
    assert same(weights(run), weights(reference))
    assert run.evaluate("val") == reference.evaluate("val")

    # Restarted again after the window: the point still needs its window's AdamW state.
    run.save(tmp_path / "checkpoint_000001")
    manifest = json.loads((tmp_path / "checkpoint_000001/manifest.rank0.json").read_text())
    assert "rollback_switch" in {name.split("/")[0] for name in manifest["files"]}
    run = load_agreed(Checkpoint(str(tmp_path / "checkpoint_000001")), restore_from(run), CPU)

    for each in (reference, run):
        each.apply(ChannelCommand(1, "rollback"))  # back to step 3, inside the window
        assert each.optimizer_name == "sgd" and same(weights(each), point)
        assert each.active["sgd_switch"].start == 2 + 3  # its window moved by the 3 steps undone
        (revert,) = train(each, 3)
        assert revert.step == 9 and same(adam_moments(each), home)
    assert same(weights(run), weights(reference))
    assert run.control == reference.control == ControlState(1, 6, 1)

    (home_file, *_) = sorted((tmp_path / "checkpoint_000000/switch/home").glob("*optim_states.pt"))
    home_file.write_bytes(home_file.read_bytes()[:100])  # the AdamW copy is verified too
    with pytest.raises(CorruptCheckpointError, match=f"switch/home/{home_file.name} has 100"):
        verify_sharded(tmp_path / "checkpoint_000000")


def restore_from(run: DeepSpeedRun) -> Callable[[Path], DeepSpeedRun]:
    return lambda directory: DeepSpeedRun.restore(run.config, run.task, run.device, directory)


def test_metrics_are_exact_over_the_whole_split_and_under_zero3(process_group: None) -> None:
    plain = make_run(zero_stage=0)
    sharded = make_run(zero_stage=3, eval_batch_size=7)  # chunks that do not divide the split
    torch.manual_seed(0)
    model = ModularDeepSpeedTask(TASK).build_model()
    expected = math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in model.parameters()))
    assert plain.weight_norm() == pytest.approx(expected, rel=1e-6)
    assert sharded.weight_norm() == pytest.approx(expected, rel=1e-6)

    x, y = plain.task.eval_splits()["val"]
    with torch.no_grad():
        logits = model(x)
    full = torch.nn.functional.cross_entropy(logits, y)
    for run in (plain, sharded):
        result = run.evaluate("val")
        assert result["loss"] == pytest.approx(float(full), rel=1e-5)
        assert result["acc"] == pytest.approx(float((logits.argmax(-1) == y).float().mean()))


def test_activation_checkpointing_recomputes_the_same_step(process_group: None) -> None:
    stored, recomputed = (
        make_run(zero_stage=2),
        make_run(zero_stage=2, activation_checkpointing=True),
    )
    train(stored, 2)
    train(recomputed, 2)
    assert recomputed.weight_norm() == pytest.approx(stored.weight_norm(), rel=1e-6)


def test_kicks_that_need_whole_gradients_are_refused(process_group: None) -> None:
    run = make_run(zero_stage=1)
    with pytest.raises(ValueError, match="'grokfast' cannot be applied to a DeepSpeed engine"):
        run.apply_kick(Kick("grokfast"))
    with pytest.raises(ValueError, match="lora_rank needs a model with a LoRA adapter; task 'mod"):
        run.apply_kick(Kick("lora_rank"))
    # From the channel the same refusal is an acknowledgement, not a failed trial.
    assert run.apply(ChannelCommand(0, "kick", Kick("lora_rank"))) is None
    assert run.control == ControlState(acked_id=0, not_applied_id=0)
    assert run.adapter_rank is None and run._rollback is None


def test_a_model_that_does_not_fit_fails_before_initialize(process_group: None) -> None:
    with pytest.raises(ValueError, match=r"model does not fit: .* memory_limit_gb is 0.00 GiB"):
        make_run(memory_limit_gb=1e-5)


def lm_run(**overrides: object) -> DeepSpeedRun:
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from grokschedule.training.deepspeed.lm_task import LMTask

    values = {
        "task": "lm",
        "lm_p": 11,
        "lm_hidden": 32,
        "lm_layers": 1,
        "num_workers": 1,
        "batch_size": 16,
        "micro_batch_size": 8,
        "lr": 1e-3,
        "weight_decay": 0.0,
        **overrides,
    }
    config = TrainerConfig.from_mapping(values)
    return DeepSpeedRun(config, LMTask.from_mapping(values, False), torch.device("cpu"))


def test_text_task_targets_only_the_answer() -> None:
    pytest.importorskip("transformers")
    from grokschedule.training.deepspeed.lm_task import EOS, IGNORE, CharTokenizer, encode_examples

    tokenizer = CharTokenizer()
    inputs, targets = encode_examples([("7+9=", "5")], tokenizer, 8)
    assert tokenizer.decode(inputs[0].tolist()) == "7+9=5"
    answer = targets[0][targets[0] != IGNORE].tolist()
    assert answer == [*tokenizer.encode("5"), EOS]
    assert targets[0, 4] == tokenizer.encode("5")[0]  # predicted from the "=" at position 4


def test_lora_rank_grows_in_place_of_the_function(process_group: None, tmp_path: Path) -> None:
    run = lm_run(lm_lora_rank=8, zero_stage=2)
    train(run, 3)
    trainable = sum(p.numel() for p in run.engine.module.parameters() if p.requires_grad)
    before = {split: run.evaluate(split) for split in ("val", "probe")}
    builds = run.engine_builds

    run.apply(SetAdapterRank(32))
    grown = sum(p.numel() for p in run.engine.module.parameters() if p.requires_grad)
    assert grown == 4 * trainable and run.engine_builds == builds + 1
    for split, result in before.items():  # zero-padded B: the model computes the same function
        assert run.evaluate(split) == pytest.approx(result, rel=1e-6)
    train(run, 2)
    assert math.isfinite(run.meter.reduce()["train_loss"])

    run.save(tmp_path)
    restored = DeepSpeedRun.restore(run.config, run.task, run.device, tmp_path)
    assert restored.task.adapter_rank == 32
    assert restored.evaluate("val") == run.evaluate("val")


def module_weights(run: DeepSpeedRun) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in run.engine.module.state_dict().items()}


def test_lora_rank_kick_through_the_channel_keeps_the_loss_and_rolls_back_exactly(
    process_group: None, tmp_path: Path
) -> None:
    """The kick behind a rollback point on ZeRO-2: the rank × 4 without changing the outputs,
    acknowledged; a restart at the grown rank; the rollback back to rank 8 and its exact
    weights, loss and AdamW moments; and a restart by config (lm_lora_rank 8 → 32)."""
    run = lm_run(lm_lora_rank=8, zero_stage=2)
    configured = run.task  # what the trial's config builds, as on every worker restart
    train(run, 3)
    before = {split: run.evaluate(split) for split in ("val", "probe")}
    weights, moments = module_weights(run), adam_moments(run)
    run.save(tmp_path / "before")
    assert (run.adapter_rank, run.adapter_rank_limit) == (8, 32)  # hidden 32

    too_big = Kick("lora_rank", {"factor": 8})
    with pytest.raises(ValueError, match=r"rank 8 × 8 = 64 is larger .*\(min\(in, out\) = 32\)"):
        run.apply_kick(too_big)
    assert run.control == ControlState() and run.adapter_rank == 8  # refused before any change

    record = run.apply(ChannelCommand(0, "kick", Kick("lora_rank")))
    assert record is not None and record.changes["lora_rank"] == (8, 32)
    assert run.adapter_rank == 32 and not run.active
    assert run.control.metrics(len(run.active)) == {
        "control/acked_id": 0,
        "control/applied_step": 3,
        "control/rollbacks": 0,
        "control/kicks_active": 0,
        "control/not_applied_id": -1,
    }
    for split, result in before.items():  # zero-padded B: the same function, the same loss
        assert run.evaluate(split) == pytest.approx(result, rel=1e-6)
    train(run, 2)
    assert math.isfinite(run.meter.reduce()["train_loss"])

    # A worker restart after the kick: built from the configured rank 8, resumed at rank 32.
    run.save(tmp_path / "kicked")
    restored = DeepSpeedRun.restore(run.config, configured, run.device, tmp_path / "kicked")
    assert restored.adapter_rank == 32 and restored.evaluate("val") == run.evaluate("val")
    restored.apply(ChannelCommand(1, "rollback"))
    assert restored.adapter_rank == 8 and restored.control == ControlState(1, 5, 1)
    restored_weights = module_weights(restored)
    assert restored_weights.keys() == weights.keys()
    assert all(torch.equal(weights[k], restored_weights[k]) for k in weights)
    assert all(torch.equal(a, b) for a, b in zip(moments, adam_moments(restored), strict=True))
    assert {split: restored.evaluate(split) for split in before} == before
    train(restored, 1)
    assert math.isfinite(restored.meter.reduce()["train_loss"])

    # The restart fallback: the trial's config now says rank 32, its checkpoint holds rank 8.
    grown_task = configured.with_adapter_rank(32)
    grown = DeepSpeedRun.restore(run.config, grown_task, run.device, tmp_path / "before")
    assert grown.adapter_rank == 32 and grown.step == 3
    for split, result in before.items():
        assert grown.evaluate(split) == pytest.approx(result, rel=1e-6)


def test_bench_runs_tiny_and_reports_throughput_and_overhead(process_group: None) -> None:
    pytest.importorskip("transformers")
    from grokschedule.bench.trainer import trainer_bench_main

    argv = ["--tiny", "--stages", "2", "--steps", "2", "--monitor-every", "2", "--rounds", "1"]
    [result] = trainer_bench_main([*argv, "--warmup", "1"])
    assert result["zero_stage"] == 2 and result["params"] > 0
    assert result["plain_tokens_per_s"] > 0 and result["monitored_tokens_per_s"] > 0
    assert math.isfinite(result["monitoring_overhead"]) and result["peak_memory_gib"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_zero2_and_zero3_with_fused_adam_on_gpu(tmp_path: Path) -> None:
    """FusedAdam's JIT build (TORCH_CUDA_ARCH_LIST=9.0a works), bf16, ZeRO-2/3 on CUDA, in a
    fresh process so it gets its own NCCL group."""
    pytest.importorskip("transformers")
    out = tmp_path / "bench.json"
    command = [sys.executable, "-m", "grokschedule.bench.trainer", "--tiny", "--precision"]
    command += ["bf16", "--stages", "2", "3", "--steps", "4", "--monitor-every", "2"]
    env = {**os.environ, "TORCH_CUDA_ARCH_LIST": "9.0a"}
    subprocess.run([*command, "--out", str(out)], check=True, env=env, timeout=900)
    results = json.loads(out.read_text())
    assert [r["zero_stage"] for r in results] == [2, 3]
    assert all(r["precision"] == "bf16" and r["plain_tokens_per_s"] > 0 for r in results)


def test_reported_training_metrics_are_the_mean_over_the_steps_since_the_last_report(
    process_group: None,
) -> None:
    """Regression: on CPU the meter's all-reduce handed back its own (then zeroed) sums, so every
    DeepSpeed trial reported train_loss 0 and train_acc 0 and never looked memorized."""
    run = make_run(zero_stage=2)
    train(run, 4)
    metrics = run.meter.reduce()
    inputs, targets = run.task.train_split()
    with torch.no_grad():
        full = run.task.stats(run.engine, inputs, targets)
    assert 0.5 * float(full.loss.mean()) < metrics["train_loss"] < 5 * math.log(23)
    assert 0 <= metrics["train_acc"] <= 1
    assert run.meter.reduce()["train_loss"] == 0  # reset: nothing trained since
    train(run, 200)
    late = run.meter.reduce()
    assert late["train_acc"] > max(metrics["train_acc"], 0.1)  # it learns, and the meter sees it
    assert late["train_loss"] < metrics["train_loss"]


def test_a_gradient_transform_from_the_channel_is_acknowledged_as_not_applied(
    process_group: None,
) -> None:
    """Regression: a ⊥Grad kick from the channel (the default first kick at low weight decay)
    raised inside the worker and failed the whole trial; now it is acknowledged, not applied."""
    run = make_run(zero_stage=2)
    train(run, 2)
    builds, norm = run.engine_builds, run.weight_norm()
    assert run.apply(ChannelCommand(0, "kick", Kick("ortho_grad", duration_steps=50))) is None
    assert run.control == ControlState(acked_id=0, applied_step=-1, not_applied_id=0)
    assert run.control_metrics()["control/grad_transforms"] == 0  # so the policy won't resend
    assert not run.active and run._rollback is None and run.engine_builds == builds
    assert run.weight_norm() == norm
    run.apply(ChannelCommand(1, "kick", Kick("lr_multiply", {"factor": 2.0}, duration_steps=5)))
    assert run.control == ControlState(acked_id=1, applied_step=2, not_applied_id=0)
    train(run, 1)  # training goes on


def test_lora_rank_growth_carries_adamw_moments_and_step(process_group: None) -> None:
    """The grown engine's AdamW goes on where the old one was: the old moments in the leading
    slice (A's rows, B's columns), zero momentum and the old mean second moment in the new one,
    the step count kept; so the step after the kick moves the old weights about as much as the
    one before it (a fresh AdamW moves every element by about lr)."""
    from deepspeed.utils import safe_get_full_optimizer_state

    from grokschedule.training.deepspeed.adam_carry import base_optimizer

    lr = 1e-2
    run = lm_run(lm_lora_rank=8, zero_stage=2, lr=lr)
    train(run, 10)
    old = lora_weights(run)
    train(run, 1)
    before = mean_move(old, lora_weights(run)) / lr
    moments = {
        name: {key: safe_get_full_optimizer_state(p, key).clone() for key in MOMENTS}
        for name, p in run.engine.module.named_parameters()
        if p.requires_grad
    }
    kicked = lora_weights(run)

    run.apply(SetAdapterRank(32))
    assert all(float(s["step"]) == 11 for s in base_optimizer(run.engine).state.values())
    for name, p in run.engine.module.named_parameters():
        if not p.requires_grad:
            continue
        rank_dim = 0 if ".lora_A." in name else 1
        for key in MOMENTS:
            value, was = safe_get_full_optimizer_state(p, key), moments[name][key]
            assert torch.equal(value.narrow(rank_dim, 0, 8), was)
            fresh = value.narrow(rank_dim, 8, 24)
            if key == "exp_avg":
                assert not fresh.any()
            else:
                assert torch.allclose(fresh, was.mean(rank_dim, keepdim=True).expand_as(fresh))
    train(run, 1)
    after = mean_move(kicked, lora_weights(run)) / lr
    assert after < 2 * before, (before, after)


MOMENTS = ("exp_avg", "exp_avg_sq")


def lora_weights(run: DeepSpeedRun) -> dict[str, torch.Tensor]:
    return {
        n: p.detach().clone() for n, p in run.engine.module.named_parameters() if p.requires_grad
    }


def mean_move(old: dict[str, torch.Tensor], new: dict[str, torch.Tensor]) -> float:
    """Mean |change| over the elements of ``old`` (the leading slice of a grown ``new``)."""
    moved = [
        (new[k][tuple(slice(0, s) for s in v.shape)] - v).abs().sum().item() for k, v in old.items()
    ]
    return sum(moved) / sum(v.numel() for v in old.values())
