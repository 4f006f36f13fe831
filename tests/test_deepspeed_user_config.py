"""A user's own DeepSpeed JSON (``TrainerConfig.deepspeed_config``): "auto" and absent keys
filled from the trainer, disagreements refused with both sides' values, impossible ZeRO/offload
combinations and what DeepSpeed's own config model refuses caught on construction, and
everything else reaching ``deepspeed.initialize`` untouched in a real one-rank gloo run."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_trainer_engine import TASK, train

from grokschedule.training.deepspeed.config import (
    TrainerConfig,
    deepspeed_config,
    model_state_bytes,
)
from grokschedule.training.deepspeed.engine import DeepSpeedRun, WeightsOnlyCheckpointEngine
from grokschedule.training.deepspeed.task import ModularDeepSpeedTask

AUTO_JSON = {
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "bf16": {"enabled": "auto"},
    "optimizer": {
        "type": "AdamW",
        "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
    },
    "scheduler": {"type": "WarmupLR", "params": {"warmup_max_lr": "auto"}},
    "zero_optimization": {"stage": "auto", "reduce_bucket_size": "auto"},
}


def test_auto_and_absent_keys_are_filled_from_the_trainer_config() -> None:
    config = TrainerConfig(
        num_workers=2, batch_size=128, micro_batch_size=16, zero_stage=2, precision="bf16"
    )
    merged = deepspeed_config(replace(config, deepspeed_config=AUTO_JSON))
    plain = deepspeed_config(config)
    assert merged["train_batch_size"] == 128 and merged["gradient_accumulation_steps"] == 4
    assert merged["train_micro_batch_size_per_gpu"] == 16 and merged["bf16"] == {"enabled": True}
    assert merged["optimizer"] == plain["optimizer"]  # lr, betas, eps, weight decay, torch_adam
    assert merged["zero_optimization"]["stage"] == 2
    assert merged["zero_optimization"]["reduce_bucket_size"] == "auto"  # DeepSpeed's own default
    assert "scheduler" not in merged  # the loop's lr_at runs the schedule
    # Absent keys too: a JSON with only passthrough keys gets every trainer value.
    only_extra = replace(config, deepspeed_config={"dump_state": False})
    assert deepspeed_config(only_extra) == {**plain, "dump_state": False}


def test_a_user_eps_is_used_the_trainer_has_no_eps_field() -> None:
    config = TrainerConfig(deepspeed_config={"optimizer": {"params": {"eps": 1e-6}}})
    assert deepspeed_config(config)["optimizer"]["params"]["eps"] == 1e-6


def test_a_json_path_is_read_once_and_by_its_spec_name(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    user = {"zero_optimization": {"stage": 2, "allgather_bucket_size": 12345}}
    path.write_text(json.dumps(user))
    # The spec passes `deepspeed_config` straight through: from_mapping takes it by that name.
    config = TrainerConfig.from_mapping({"p": 23, "zero_stage": 2, "deepspeed_config": str(path)})
    path.unlink()  # workers on other nodes need not see the file
    assert config.user_deepspeed_config == user
    assert deepspeed_config(config)["zero_optimization"]["allgather_bucket_size"] == 12345


@pytest.mark.parametrize(
    ("trainer", "user", "message"),
    [
        (
            {},
            {"train_micro_batch_size_per_gpu": 8},
            r"train_micro_batch_size_per_gpu=8 vs micro_batch_size=16",
        ),
        ({}, {"train_batch_size": 128}, r"train_batch_size=128 vs batch_size=64"),
        (
            {},
            {"gradient_accumulation_steps": 4},
            r"gradient_accumulation_steps=4 vs batch_size / \(micro_batch_size × num_workers\) "
            r"= 64 / \(16 × 2\) = 2",
        ),
        ({}, {"gradient_clipping": 0.5}, r"gradient_clipping=0.5 vs grad_clip=1.0"),
        (
            {"zero_stage": 2},
            {"zero_optimization": {"stage": 3}},
            r"zero_optimization.stage=3 vs zero_stage=2",
        ),
        (
            {},
            {"bf16": {"enabled": True}},
            r"bf16.enabled=True vs precision='fp32' \(so bf16.enabled=False\)",
        ),
        (
            {"precision": "bf16"},
            {"bfloat16": {"enabled": False}},
            r"bf16.enabled=False vs precision='bf16'",
        ),
        ({}, {"optimizer": {"type": "SGD"}}, r"optimizer.type='SGD' vs optimizer='adamw'"),
        ({}, {"optimizer": {"params": {"lr": 1e-4}}}, r"optimizer.params.lr=0.0001 vs lr=0.001"),
        (
            {},
            {"optimizer": {"params": {"betas": [0.9, 0.999]}}},
            r"optimizer.params.betas=\[0.9, 0.999\] vs \[beta1, beta2\] = \[0.9, 0.98\]",
        ),
        (
            {},
            {"optimizer": {"params": {"weight_decay": 0.1}}},
            r"weight_decay=0.1 vs weight_decay=1.0",
        ),
        (
            {"optimizer": "sgd"},
            {"optimizer": {"params": {"momentum": 0.5}}},
            r"momentum=0.5 vs momentum=0.9",
        ),
        (
            {},
            {"optimizer": {"params": {"momentum": 0.5}}},
            r"momentum=0.5 has no place with optimizer='adamw'",
        ),
        (
            {},
            {"optimizer": {"params": {"torch_adam": False}}},
            r"torch_adam=False vs fused_adam=None \(so optimizer.params.torch_adam=True\)",
        ),
        (
            {},
            {"checkpoint": {"use_node_local_storage": False}},
            r"use_node_local_storage=False vs the trainer's node-local",
        ),
        (
            {},
            {"scheduler": {"type": "WarmupCosineLR"}},
            r"scheduler.type='WarmupCosineLR' vs lr_schedule='constant' \(WarmupLR\)",
        ),
        (
            {"lr_schedule": "cosine"},
            {"scheduler": {"params": {"total_num_steps": 500}}},
            r"total_num_steps=500 vs max_steps=1000",
        ),
        (
            {"warmup_steps": 10},
            {"scheduler": {"params": {"warmup_num_steps": 100}}},
            r"warmup_num_steps=100 vs warmup_steps=10",
        ),
        (
            {},
            {"scheduler": {"params": {"warmup_type": "log"}}},
            r"warmup_type='log' vs the trainer's linear warmup='linear'",
        ),
        (
            {},
            {"scheduler": {"type": "OneCycle"}},
            r"scheduler.type='OneCycle' has no trainer equivalent",
        ),
    ],
)
def test_a_value_set_on_both_sides_must_agree(trainer: dict, user: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        TrainerConfig(**trainer, deepspeed_config=user)
    assert "Set those DeepSpeed keys to 'auto'" in str(error.value)


def test_every_disagreement_is_named_at_once() -> None:
    user = {"train_micro_batch_size_per_gpu": 8, "optimizer": {"params": {"lr": 0.1}}}
    with pytest.raises(ValueError, match=r"=8 vs micro_batch_size=16; .*lr=0.1 vs lr=0.001"):
        TrainerConfig(deepspeed_config=user)


def test_agreeing_values_and_a_matching_scheduler_are_accepted() -> None:
    config = TrainerConfig(
        num_workers=2,
        batch_size=64,
        micro_batch_size=16,
        zero_stage=1,
        lr=3e-3,
        lr_schedule="linear",
        warmup_steps=10,
        max_steps=500,
        min_lr_ratio=0.1,
        deepspeed_config={
            "train_batch_size": 64,
            "train_micro_batch_size_per_gpu": 16,
            "gradient_accumulation_steps": 2,
            "gradient_clipping": 1.0,
            "zero_optimization": {"stage": 1},
            "bf16": {"enabled": False},
            "optimizer": {"type": "adamw", "params": {"lr": 0.003, "betas": [0.9, 0.98]}},
            "scheduler": {
                "type": "WarmupDecayLR",
                "params": {
                    "warmup_num_steps": 10,
                    "total_num_steps": 500,
                    "warmup_max_lr": 0.003,
                    "warmup_min_lr": 0.0003,
                    "warmup_type": "linear",
                },
            },
        },
    )
    assert "scheduler" not in deepspeed_config(config)


def test_everything_else_passes_through_and_a_rebuild_keeps_it() -> None:
    user = {
        "zero_optimization": {
            "offload_optimizer": {"device": "cpu", "pin_memory": False},
            "offload_param": {"device": "cpu"},
            "stage3_max_live_parameters": 54321,
            "overlap_comm": False,  # the trainer's default, overridden
            "sub_group_size": 1000,
        },
        "communication_data_type": "fp32",
        "fp16": {"initial_scale_power": 8},
        "optimizer": {"params": {"eps": 1e-6, "amsgrad": True}},
    }
    config = TrainerConfig(zero_stage=3, deepspeed_config=user)
    merged = deepspeed_config(config)
    for key, value in user["zero_optimization"].items():
        assert merged["zero_optimization"][key] == value
    assert (
        merged["communication_data_type"] == "fp32" and merged["fp16"]["initial_scale_power"] == 8
    )
    assert merged["optimizer"]["params"]["amsgrad"] and merged["optimizer"]["params"]["eps"] == 1e-6
    # An sgd_switch with a batch kick: the kick's batch, the trainer's SGD, the user's extras.
    rebuilt = deepspeed_config(config, optimizer="sgd", batch_size=128)
    assert rebuilt["train_batch_size"] == 128 and rebuilt["gradient_accumulation_steps"] == 4
    assert rebuilt["optimizer"]["type"] == "SGD" and "amsgrad" not in rebuilt["optimizer"]["params"]
    assert rebuilt["zero_optimization"] == merged["zero_optimization"]


def test_offloaded_state_is_not_counted_against_the_device() -> None:
    n = 10_000_000
    plain = TrainerConfig(zero_stage=3, num_workers=1, batch_size=16, micro_batch_size=16)
    zero = {"offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "cpu"}}
    offloaded = replace(plain, deepspeed_config={"zero_optimization": zero})
    assert offloaded.offloaded == {"param", "optimizer"}
    assert model_state_bytes(n, n, plain, 1) == 16 * n  # fp32 weights, grads, Adam's moments
    assert model_state_bytes(n, n, offloaded, 1) == 4 * n  # only the gradients stay


@pytest.mark.parametrize(
    ("stage", "zero", "message"),
    [
        (
            2,
            {"offload_param": {"device": "cpu"}},
            r"offload_param \(device 'cpu'\) needs zero_stage 3, got 2",
        ),
        (
            0,
            {"offload_optimizer": {"device": "cpu"}},
            r"offload_optimizer \(device 'cpu'\) needs zero_stage 1, 2 or 3, got 0",
        ),
        (
            0,
            {"cpu_offload": True},
            r"offload_optimizer \(device 'cpu'\) needs zero_stage 1, 2 or 3, got 0",
        ),
        (3, {"offload_param": {"device": "nvme"}}, r"offload_param device 'nvme' needs nvme_path"),
        (
            2,
            {"offload_optimizer": {"device": "nvme", "nvme_path": ""}},
            r"offload_optimizer device 'nvme' needs nvme_path",
        ),
    ],
)
def test_impossible_zero_offload_combinations(stage: int, zero: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainerConfig(zero_stage=stage, deepspeed_config={"zero_optimization": zero})


@pytest.mark.parametrize(
    ("user", "message"),
    [
        (
            {"zero_optimization": {"stage3_max_live_parmeters": 1}},
            r"refused by DeepSpeed 0\.19\.8's config model: .*stage3_max_live_parmeters",
        ),
        (
            {"zero_optimization": {"offload_optimizer": {"device": "gpu"}}},
            r"refused by DeepSpeed .*device",
        ),
        ({"steps_per_print": "auto"}, r"steps_per_print='auto' is not a key the trainer fills"),
        (
            {"optimizer": {"params": {"amsgrad": "auto"}}},
            r"optimizer.params.amsgrad='auto' is not a key",
        ),
        ({"optimizer": []}, r"deepspeed_config optimizer must be an object, got \[\]"),
        ({"bf16": {}, "bfloat16": {}}, r"both 'bf16' and its alias 'bfloat16'"),
    ],
)
def test_what_deepspeed_or_the_merge_cannot_take_is_refused_on_construction(
    user: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        TrainerConfig(zero_stage=1, deepspeed_config=user)


def test_an_unreadable_json_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"deepspeed_config '.*missing.json' cannot be read"):
        TrainerConfig(deepspeed_config=tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{stage: 2")
    with pytest.raises(ValueError, match=r"bad.json' is not JSON"):
        TrainerConfig(deepspeed_config=str(tmp_path / "bad.json"))
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"must hold a JSON object, got list"):
        TrainerConfig(deepspeed_config=str(tmp_path / "list.json"))
    with pytest.raises(ValueError, match=r"a JSON file path, a dict or None, got int"):
        TrainerConfig(deepspeed_config=3)  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stage", "zero"),
    [
        (
            2,
            {
                "offload_optimizer": {"device": "cpu", "pin_memory": False},
                "reduce_bucket_size": 12345,
                "allgather_bucket_size": 23456,
            },
        ),
        (
            3,
            {
                "offload_param": {"device": "cpu"},
                "offload_optimizer": {"device": "cpu"},
                "stage3_max_live_parameters": 54321,
                "stage3_param_persistence_threshold": 0,
            },
        ),
    ],
)
def test_passthrough_keys_reach_deepspeed_initialize(
    process_group: None,
    tmp_path: Path,
    stage: int,
    zero: dict,
) -> None:
    """ZeRO-Offload to the CPU on a CPU run: torch's AdamW (torch_adam) steps on the host."""
    user = {"zero_optimization": zero, "communication_data_type": "fp32"}
    values = {"num_workers": 1, "batch_size": 32, "micro_batch_size": 16, "zero_stage": stage}
    config = TrainerConfig.from_mapping({**TASK, **values, "deepspeed_config": user})
    run = DeepSpeedRun(config, ModularDeepSpeedTask(TASK), torch.device("cpu"))
    engine = run.engine
    passed = engine._config._param_dict  # the dict deepspeed.initialize was given
    assert all(passed["zero_optimization"][key] == value for key, value in zero.items())
    assert passed["zero_optimization"]["stage"] == stage
    assert passed["communication_data_type"] == "fp32"
    assert (
        engine.zero_cpu_offload() and engine._config.zero_config.offload_optimizer.device == "cpu"
    )
    if stage == 2:
        assert engine._config.zero_config.reduce_bucket_size == 12345
        assert engine._config.zero_config.allgather_bucket_size == 23456
    else:
        assert engine._config.zero_config.offload_param.device == "cpu"
        assert engine._config.zero_config.max_live_parameters == 54321
    assert isinstance(engine.checkpoint_engine, WeightsOnlyCheckpointEngine)
    train(run, 3)
    assert math.isfinite(run.meter.reduce()["train_loss"])

    run.save(tmp_path)  # the offloaded optimizer state comes back through weights_only loads
    restored = DeepSpeedRun.restore(run.config, run.task, run.device, tmp_path)
    assert restored.weight_norm() == run.weight_norm()
    train(run, 1)
    train(restored, 1)
    assert restored.weight_norm() == pytest.approx(run.weight_norm(), rel=1e-6)
