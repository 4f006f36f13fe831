"""The trainer integrations' shared part on a real torch optimizer and lr scheduler: kicks that the
schedule carries instead of undoing, exact restores, the SGD switch, rollback, and that
``import grokschedule`` needs neither transformers nor lightning."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from grokschedule.core.kicks import Kick
from grokschedule.integrations.common import OptimizerKicks


def decay(step: int) -> float:
    return 1.0 - step / 100


def setup(weight_decays: tuple[float, ...] = (0.1,)):
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in weight_decays])
    groups = [
        {"params": layer.parameters(), "weight_decay": wd}
        for layer, wd in zip(model, weight_decays, strict=True)
    ]
    optimizer = torch.optim.AdamW(groups, lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, decay)
    return model, optimizer, scheduler, OptimizerKicks(model, optimizer, [scheduler])


def train_step(model, optimizer, scheduler, kicks, step: int) -> None:
    """One step the way Trainer and Lightning order it."""
    optimizer.zero_grad()
    model(torch.randn(8, 4)).pow(2).mean().backward()
    kicks.before_step(step)
    optimizer.step()
    scheduler.step()
    kicks.after_step(step)


def lrs(optimizer) -> list[float]:
    return [group["lr"] for group in optimizer.param_groups]


def test_lr_kick_rides_the_schedule_and_ends_exactly() -> None:
    model, optimizer, scheduler, kicks = setup()
    for step in range(10):
        train_step(model, optimizer, scheduler, kicks, step)
    record = kicks.apply(Kick("lr_multiply", {"factor": 3.0}, duration_steps=5), 10)
    assert record.changes["lr"] == ((0.1 * decay(10),), (pytest.approx(0.3 * decay(10)),))
    for step in range(10, 15):
        assert lrs(optimizer) == [pytest.approx(0.3 * decay(step))]  # not undone by the schedule
        train_step(model, optimizer, scheduler, kicks, step)
    assert scheduler.base_lrs == [0.1]  # written back exactly
    assert lrs(optimizer) == [pytest.approx(0.1 * decay(15))]
    train_step(model, optimizer, scheduler, kicks, 15)
    assert lrs(optimizer) == [0.1 * decay(16)] and kicks.active == ()


def test_weight_decay_kick_scales_only_decayed_groups() -> None:
    model, optimizer, scheduler, kicks = setup((0.1, 0.0))
    kicks.apply(Kick("weight_decay", {"factor": 3.0}, duration_steps=2), 0)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [pytest.approx(0.3), 0.0]
    for step in range(2):
        train_step(model, optimizer, scheduler, kicks, step)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    assert lrs(optimizer) == [0.1 * decay(2)] * 2


def test_sgd_switch_sets_the_optimizer_aside_and_brings_it_back_untouched() -> None:
    model, optimizer, scheduler, kicks = setup()
    for step in range(3):
        train_step(model, optimizer, scheduler, kicks, step)
    own_step = optimizer.step  # the scheduler's wrapper of AdamW.step
    adam = {k: v.clone() for k, v in optimizer.state[model[0].weight].items()}
    kicks.apply(Kick("sgd_switch", {"lr": 0.05, "momentum": 0.9}, duration_steps=2), 3)
    assert type(kicks.optimizer).__name__ == "SGD" and kicks.optimizer.defaults["momentum"] == 0.9

    weight = model[0].weight
    before = weight.detach().clone()
    optimizer.zero_grad()
    model(torch.randn(8, 4)).pow(2).mean().backward()
    grad = weight.grad.detach().clone()
    optimizer.step()  # the trainer's call: SGD's step (first step: buffer = grad)
    expected = before * (1 - 0.05 * 0.1) - 0.05 * grad  # SGD's weight decay is the group's
    torch.testing.assert_close(weight.detach(), expected)
    scheduler.step()
    kicks.after_step(3)
    train_step(model, optimizer, scheduler, kicks, 4)  # the window's last step

    assert optimizer.step == own_step and kicks.optimizer is optimizer
    for key, value in adam.items():  # AdamW's moments and step count as they were
        torch.testing.assert_close(optimizer.state[weight][key], value)
    train_step(model, optimizer, scheduler, kicks, 5)
    assert float(optimizer.state[weight]["step"]) == float(adam["step"]) + 1


def test_restore_returns_to_the_point_and_keeps_the_schedule_place(tmp_path) -> None:
    model, optimizer, scheduler, kicks = setup()
    kicks.apply(Kick("grokfast"), 0)  # in force at the point, with what it carries
    kicks.apply(Kick("grad_noise", {"std": 1e-3}), 0)
    for step in range(5):
        train_step(model, optimizer, scheduler, kicks, step)
    torch.save(kicks.state_dict(5), tmp_path / "point.pt")  # as GrokRun keeps a point
    point = torch.load(tmp_path / "point.pt", weights_only=True)
    saved = {k: v.clone() for k, v in point["optimizer"]["state"][0].items()}
    kicks.apply(Kick("lr_multiply", {"factor": 10.0}, duration_steps=50), 5)
    for step in range(5, 9):
        train_step(model, optimizer, scheduler, kicks, step)
    kicks.restore(point, 9)
    assert [a.kick.kind for a in kicks.active] == ["grokfast", "grad_noise"]
    assert [a.start for a in kicks.active] == [4, 4]  # moved by the 4 steps since the point
    assert scheduler.base_lrs == [0.1]
    assert lrs(optimizer) == [pytest.approx(0.1 * decay(9))]  # the schedule's lr now, unkicked
    for key, value in saved.items():
        torch.testing.assert_close(optimizer.state[model[0].weight][key], value)


def test_unsupported_kicks_are_refused_before_training() -> None:
    from grokschedule.core.contract import MetricNames
    from grokschedule.integrations.common import GrokSettings

    options = {
        "metric": "val_acc",
        "mode": "max",
        "names": MetricNames(),
        "max_t": 100,
        "grok_threshold": 0.95,
        "max_extension": None,
        "patience_factor": 20.0,
        "min_patience": None,
        "stop_on_grok": True,
        "phase_options": None,
        "predictor": False,
        "stop_below": None,
        "keep_above": 0.5,
        "judge_after": 4.0,
        "adaptive": False,
        "hint": "",
    }
    with pytest.raises(ValueError, match="a batch_size kick cannot be carried out"):
        GrokSettings(interventions={"kicks": [Kick("batch_size", {"factor": 2})]}, **options)
    with pytest.raises(ValueError, match="a lora_rank kick cannot be carried out by a trainer"):
        GrokSettings(interventions=["lr_cycle", "lora_rank"], **options)
    # The defaults hold lora_rank, which the policy never gives a run that reports no LoRA rank.
    settings = GrokSettings(interventions=True, **options)
    assert "lora_rank" in [k.kind for k in settings.interventions.kicks]
    with pytest.raises(ValueError, match="patience_factor must be > 0"):
        GrokSettings(**{**options, "patience_factor": 0}, interventions=None)


def test_importing_grokschedule_needs_neither_transformers_nor_lightning() -> None:
    code = (
        "import sys, grokschedule, grokschedule.integrations as i;"
        "assert not {'transformers', 'lightning'} & set(sys.modules), sorted(sys.modules);"
        "assert i.__all__ == "
        "['GrokLightningCallback', 'GrokMetricsCallback', 'GrokTrainerCallback']"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_packed_state_loads_without_running_pickled_code(tmp_path) -> None:
    """The whole policy (the adaptive predictor's history, numpy RNG) and the kicks in force
    (grokfast's EMA tensors, an SGD switch's momentum) come back through ``weights_only``
    loading; a state naming anything else is refused before anything is built."""
    from grokschedule.core.contract import MetricNames
    from grokschedule.core.kick_policy import KickConfig
    from grokschedule.integrations.common import GrokSettings
    from grokschedule.integrations.run_state import pack_state, unpack_state
    from grokschedule.training.checkpoints import UnsafeCheckpointError

    settings = GrokSettings(
        metric="val_acc",
        mode="max",
        names=MetricNames("step", "val_acc", "train_loss", "train_acc", "val_loss", None),
        max_t=400,
        grok_threshold=0.95,
        max_extension=None,
        patience_factor=1.0,
        min_patience=0,
        stop_on_grok=True,
        phase_options=None,
        interventions=True,
        predictor=True,
        stop_below=None,
        keep_above=0.5,
        judge_after=1.0,
        adaptive=True,
        hint="",
    )
    model, optimizer, scheduler, kicks = setup()
    run = settings.run(400, model, kicks, tmp_path / "rollback.pt")
    for step in range(5, 100, 5):
        logged = {"train_loss": 0.01, "train_acc": 1.0, "val_loss": 2.0 + step / 100}
        run.observe({**logged, "val_acc": 0.25}, step)
    [grokfast] = KickConfig.from_user(["grokfast"]).kicks
    kicks.apply(grokfast, 100)
    kicks.apply(Kick("sgd_switch", {"lr": 0.05, "momentum": 0.9}, duration_steps=20), 100)
    for step in range(100, 103):
        train_step(model, optimizer, scheduler, kicks, step)

    state = unpack_state(pack_state(run), "test")
    assert state["policy"].decision_log("run") == run.decisions
    assert state["policy"].trial("run").history is not None  # the predictor's input
    resumed = OptimizerKicks(model, optimizer, [scheduler])
    resumed.resume(state["kicks"])
    assert [a.kick for a in resumed.active] == [a.kick for a in kicks.active]

    foreign = tmp_path / "foreign"
    torch.save({"format": 1, "policy": foreign}, foreign)  # a pathlib class, not core's
    with pytest.raises(UnsafeCheckpointError, match=r"names pathlib\.\w*Path"):
        unpack_state(foreign.read_bytes(), "test")
