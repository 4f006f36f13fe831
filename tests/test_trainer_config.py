"""TrainerConfig validation, the DeepSpeed JSON, the LR schedule, the memory estimate, and the
bad input only the task shows (empty splits, LoRA ranks), refused before any worker starts."""

from __future__ import annotations

import pytest
from test_trainer_engine import lm_run, train

from grokschedule.training.deepspeed.config import (
    GIB,
    TrainerConfig,
    check_fits,
    check_task,
    cuda_arch_list_for_deepspeed,
    deepspeed_config,
    lr_at,
    model_state_bytes,
)
from grokschedule.training.deepspeed.engine import SetAdapterRank
from grokschedule.training.deepspeed.registry import build_task


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"zero_stage": 4}, r"zero_stage must be one of \(0, 1, 2, 3\), got 4"),
        ({"precision": "fp8"}, "precision must be one of"),
        ({"optimizer": "lion"}, "optimizer must be one of"),
        (
            {"batch_size": 100, "micro_batch_size": 16, "num_workers": 2},
            r"batch_size 100 is not divisible by micro_batch_size 16 × num_workers 2 = 32; "
            r"nearest valid: 96 or 128",
        ),
        ({"precision": "fp16"}, "'fp16' needs use_gpu=True"),
        ({"fused_adam": True}, "FusedAdam is a CUDA kernel"),
        ({"lr": 0.0}, "need lr > 0"),
        ({"controller_failure_limit": -1}, "bounded retries"),
        ({"checkpoint_every": 30, "eval_every": 20}, "checkpoint_every 30 must be a multiple"),
    ],
)
def test_bad_config_is_a_value_error_with_the_numbers(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainerConfig(**overrides)


def test_from_mapping_ignores_task_and_tune_keys() -> None:
    config = TrainerConfig.from_mapping({"p": 47, "op": "add", "zero_stage": 2, "lr": 3e-3})
    assert config.zero_stage == 2 and config.lr == 3e-3


def test_deepspeed_config_splits_the_batch_and_picks_the_optimizer() -> None:
    config = TrainerConfig(
        num_workers=2, batch_size=128, micro_batch_size=16, zero_stage=2, precision="bf16"
    )
    ds = deepspeed_config(config)
    assert ds["gradient_accumulation_steps"] == 4
    assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"]["enabled"]
    assert ds["optimizer"]["type"] == "AdamW" and ds["optimizer"]["params"]["torch_adam"]
    assert "scheduler" not in ds  # the loop owns the schedule, so kicks compose with it
    sgd = deepspeed_config(config, optimizer="sgd", batch_size=256)
    assert sgd["optimizer"]["type"] == "SGD" and sgd["gradient_accumulation_steps"] == 8
    gpu = TrainerConfig(use_gpu=True, precision="bf16", batch_size=32, micro_batch_size=16)
    assert not deepspeed_config(gpu)["optimizer"]["params"]["torch_adam"]  # FusedAdam on CUDA


def test_lr_schedule_warms_up_then_decays_to_the_floor() -> None:
    config = TrainerConfig(lr=1.0, warmup_steps=10, max_steps=110, lr_schedule="cosine")
    assert lr_at(config, 0) == pytest.approx(0.1)
    assert lr_at(config, 9) == pytest.approx(1.0)
    assert lr_at(config, 60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(config, 110) == pytest.approx(0.1)
    assert lr_at(TrainerConfig(lr=0.5), 1234) == 0.5


def test_memory_estimate_follows_the_zero_paper() -> None:
    n = 1_000_000_000
    # Mixed-precision Adam: 2 + 2 + 12 bytes per param, ZeRO-3 on 8 ranks divides all of it.
    stage0 = TrainerConfig(precision="bf16", zero_stage=0, batch_size=16, micro_batch_size=8)
    assert model_state_bytes(n, n, stage0, 1) == 16 * n
    stage3 = TrainerConfig(
        precision="bf16", zero_stage=3, num_workers=8, batch_size=64, micro_batch_size=8
    )
    assert model_state_bytes(n, n, stage3, 8) == 2 * n
    with pytest.raises(ValueError, match=r"model does not fit: 1,000,000,000 params .* 14.90 GiB"):
        check_fits(n, n, stage0, 1, 14 * GIB, "H100 80GB HBM3 memory")
    limited = TrainerConfig(memory_limit_gb=0.001)
    with pytest.raises(ValueError, match=r"memory_limit_gb is 0\.00 GiB"):
        check_fits(1_000_000, 1_000_000, limited, 2, 80 * GIB, "host")


def test_cuda_arch_list_drops_arch_specific_suffixes() -> None:
    assert cuda_arch_list_for_deepspeed("9.0a") == "9.0"
    assert cuda_arch_list_for_deepspeed("8.0;9.0a 10.0a+PTX") == "8.0;9.0;10.0+PTX"
    assert cuda_arch_list_for_deepspeed("9.0;9.0a") == "9.0"
    with pytest.raises(ValueError, match="not like"):
        cuda_arch_list_for_deepspeed("hopper")


# -- bad input that needs the task: refused by the driver-side trainable, before any worker -----


@pytest.mark.parametrize(
    ("task", "message"),
    [
        (
            {"p": 2, "train_fraction": 0.9},
            r"task 'modular': the 'val' set is empty after the split \(train 4, val 0 examples\) "
            r"with op='add', p=2, train_fraction=0.9; lower train_fraction or raise p",
        ),
        (  # div drops the pairs with y = 0: 2 of 4 are left, and 0.75 of 2 rounds to both
            {"op": "div", "p": 2, "train_fraction": 0.75},
            r"'val' set is empty after the split \(train 2, val 0 examples\) with op='div'",
        ),
        (
            {"task": "lm", "lm_p": 2, "lm_train_fraction": 0.9},
            r"task 'lm': the 'val' set is empty .* lm_p=2, lm_train_fraction=0.9; "
            r"lower lm_train_fraction or raise lm_p",
        ),
    ],
)
def test_an_empty_evaluation_set_is_refused_with_its_sizes(task: dict, message: str) -> None:
    config = TrainerConfig.from_mapping(task)
    with pytest.raises(ValueError, match=message):
        check_task(config, build_task(config.task, task, False))


def test_a_lora_rank_above_the_layer_it_adapts_is_refused() -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    values = {"task": "lm", "lm_p": 11, "lm_hidden": 32, "lm_layers": 1}
    config = TrainerConfig.from_mapping(values)
    check_task(config, build_task("lm", {**values, "lm_lora_rank": 32}, False))  # = hidden: fits
    with pytest.raises(
        ValueError,
        match=r"lm_lora_rank 64 is larger than the layer it adapts: "
        r"base_model\.model\.model\.layers\.0\.self_attn\.q_proj maps 32 → 32, "
        r"min\(in, out\) = 32; use lm_lora_rank <= 32",
    ):
        check_task(config, build_task("lm", {**values, "lm_lora_rank": 64}, False))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"p": 2, "train_fraction": 0.9}, r"the 'val' set is empty"),
        (
            {"zero_stage": 1, "deepspeed_config": {"zero_optimization": {"stage": 2}}},
            r"zero_optimization.stage=2 vs zero_stage=1",
        ),
        (
            {"deepspeed_config": {"zero_optimization": {"offload_param": {"device": "cpu"}}}},
            r"offload_param \(device 'cpu'\) needs zero_stage 3, got 0",
        ),
    ],
)
def test_the_deepspeed_trainable_refuses_bad_input_before_asking_for_workers(
    config: dict, message: str
) -> None:
    """No Ray cluster, no Tune session: these fail before the trainable gets that far."""
    from grokschedule.adapters.trainables.deepspeed import make_trainable

    with pytest.raises(ValueError, match=message):
        make_trainable()({"p": 23, **config})


@pytest.mark.slow
def test_raising_the_lora_rank_past_the_layers_is_refused_and_the_run_goes_on(
    process_group: None,
) -> None:
    run = lm_run(lm_lora_rank=8, zero_stage=2)  # lm_hidden 32: q_proj is 32 → 32
    with pytest.raises(ValueError, match=r"SetAdapterRank rank 64 is larger than the layer"):
        run.apply(SetAdapterRank(64))
    assert run.task.adapter_rank == 8
    train(run, 1)  # the engine was not released
