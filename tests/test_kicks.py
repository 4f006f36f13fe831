"""Kicks and the KickApplier on real torch optimizers: exact values, exact restores."""

from __future__ import annotations

import io
import json
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grokschedule.core.kicks import KINDS, Kick, KickRecord
from grokschedule.training.kick_applier import KickApplier
from grokschedule.training.modular.trainer import ModularTrainer, TrainConfig, make_optimizer

torch.set_num_threads(1)

LR, WD = 3e-4, 0.5
Step = tuple[str, float, float, int]


def train(
    model: nn.Module, applier: KickApplier, start: int, n: int, x: torch.Tensor, y: torch.Tensor
) -> tuple[list[Step], list[KickRecord]]:
    """The loop a trainer runs; returns (optimizer, lr, wd, accumulation) seen at each step."""
    seen, records = [], []
    for step in range(start, start + n):
        optimizer = applier.optimizer
        optimizer.zero_grad(set_to_none=True)
        k = applier.accumulation_steps
        for xb, yb in zip(x.chunk(k), y.chunk(k), strict=True):
            (F.cross_entropy(model(xb), yb) / k).backward()
        applier.before_step(step)
        group = optimizer.param_groups[0]
        seen.append((type(optimizer).__name__, group["lr"], group["weight_decay"], k))
        optimizer.step()
        records += applier.after_step(step)
    return seen, records


def linear() -> tuple[nn.Module, torch.optim.Optimizer, KickApplier]:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = make_optimizer("adamw", model.parameters(), LR, WD)
    return model, opt, KickApplier(model, opt)


def train_linear(
    model: nn.Module, applier: KickApplier, start: int, n: int
) -> tuple[list[Step], list[KickRecord]]:
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 4, generator=generator), torch.randint(3, (8,), generator=generator)
    return train(model, applier, start, n, x, y)


def trainer() -> ModularTrainer:
    config = TrainConfig(p=11, embed_dim=8, hidden_dim=16, lr=1e-5, weight_decay=1.0)
    return ModularTrainer(config)


def train_trainer(
    t: ModularTrainer, applier: KickApplier, n: int
) -> tuple[list[Step], list[KickRecord]]:
    result = train(t.model, applier, t.step, n, t.x_train, t.y_train)
    t.step += n
    return result


# -- the data model ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "params", "duration", "message"),
    [
        ("lr_multiplier", {"factor": 2}, 5, r"kind must be one of \('lr_multiply', 'lr_cycle'"),
        (
            "lr_multiply",
            {"factor": 0},
            5,
            r"params\['factor'\] for lr_multiply must be a number > 0",
        ),
        ("lr_multiply", {"factor": -2.0}, 5, r"params\['factor'\] .* > 0, got -2.0"),
        ("lr_multiply", {"factor": math.nan}, 5, r"params\['factor'\]"),
        ("lr_multiply", {"factor": math.inf}, 5, r"params\['factor'\]"),
        ("lr_multiply", {"factor": True}, 5, r"params\['factor'\]"),
        ("lr_multiply", {}, 5, r"params\['factor'\] is required for lr_multiply"),
        ("lr_multiply", {"factor": 2}, 0, r"duration_steps must be an int > 0 or None"),
        ("lr_multiply", {"factor": 2}, -3, r"duration_steps must be an int > 0"),
        ("lr_multiply", {"factor": 2}, 2.5, r"duration_steps must be an int > 0"),
        ("lr_cycle", {"peak": 3}, None, r"duration_steps is required for lr_cycle"),
        ("lr_cycle", {"peak": 3, "triangular": 0.5}, 4, r"'triangular'.*0 \(cosine\) or 1"),
        ("sgd_switch", {"lr": 1e-4}, None, r"duration_steps is required for sgd_switch"),
        ("sgd_switch", {"lr": 1e-4, "momentum": 1.0}, 3, r"'momentum'.*in \[0, 1\)"),
        ("batch_size", {"factor": 8}, 5, r"params\['factor'\] for batch_size must be 2, 3 or 4"),
        ("batch_size", {"factor": 2.5}, 5, r"2, 3 or 4"),
        ("batch_size", {"factor": 2, "scale_lr": 2}, 5, r"'scale_lr'.*in \[0, 1\]"),
        ("weight_decay", {"factor": -1}, None, r"params\['factor'\] for weight_decay"),
        ("grad_noise", {"std": 0.0}, None, r"params\['std'\]"),
        ("grokfast", {"alpha": 1.0}, None, r"params\['alpha'\] for grokfast must be in \(0, 1\)"),
        ("grokfast", {"beta": 0.5}, None, r"params \['beta'\] unknown .* \['alpha', 'lamb'\]"),
        ("ortho_grad", {"factor": 2}, None, r"params \['factor'\] unknown for ortho_grad"),
        ("lora_rank", {"factor": 1}, None, r"'factor'\] for lora_rank must be an integer >= 2"),
        ("lora_rank", {"factor": 2.5}, None, r"an integer >= 2, got 2.5"),
        ("lora_rank", {"factor": 2}, 100, r"duration_steps must be None for lora_rank"),
    ],
)
def test_bad_kicks_raise_naming_the_field(
    kind: str, params: dict[str, float], duration: int | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Kick(kind, params, duration)


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match=r"only keys .*got \['duration', 'kind'\]"):
        Kick.from_dict({"kind": "grokfast", "duration": 3})


EXAMPLES = [
    Kick("lr_multiply", {"factor": 10}, 100, "plateau at step 4000"),
    Kick("lr_cycle", {"peak": 5.0, "triangular": 1}, 50),
    Kick("batch_size", {"factor": 4, "scale_lr": 0.5}, 20),
    Kick("sgd_switch", {"lr": 1e-4}, 3),
    Kick("weight_decay", {"factor": 2.0}),
    Kick("grad_noise", {"std": 0.01, "gamma": 0.55}, 200),
    Kick("grokfast"),
    Kick("ortho_grad"),
    Kick("lora_rank", {"factor": 2}),
]


def test_examples_cover_every_kind() -> None:
    assert sorted(k.kind for k in EXAMPLES) == sorted(KINDS)


def test_a_lora_rank_kick_multiplies_the_rank_and_is_permanent() -> None:
    kick = Kick("lora_rank")
    assert kick.params == {"factor": 4.0} and kick.duration_steps is None
    assert kick.rank_after(8) == 32 and Kick("lr_multiply", {"factor": 3.0}).rank_after(8) == 8


def test_the_applier_refuses_a_lora_rank_kick_and_the_trainer_keeps_its_state() -> None:
    t = trainer()
    before = t.optimizer.param_groups[0]["lr"]
    command = {"id": 0, "type": "kick", "kick": Kick("lora_rank").to_dict()}
    with pytest.raises(ValueError, match="lora_rank needs a model with a LoRA adapter"):
        t.apply_command(command)
    assert t.control.acked_id == -1 and not t.applier.active
    assert t.optimizer.param_groups[0]["lr"] == before
    with pytest.raises(ValueError, match="no kick since the last rollback"):  # no point was kept
        t.apply_command({"id": 0, "type": "rollback"})


@pytest.mark.parametrize("kick", EXAMPLES)
def test_kick_round_trips_through_json_and_pickle(kick: Kick) -> None:
    data = json.loads(json.dumps(kick.to_dict()))
    assert Kick.from_dict(data) == kick
    assert pickle.loads(pickle.dumps(kick)) == kick
    assert hash(Kick.from_dict(data)) == hash(kick)
    assert all(type(v) is float for v in kick.params.values())


def test_params_are_completed_with_defaults_and_copied() -> None:
    params = {"lamb": 5}
    kick = Kick("grokfast", params)
    params["lamb"] = -1.0
    assert kick.params == {"alpha": 0.98, "lamb": 5.0}
    assert Kick("sgd_switch", {"lr": 1e-4}, 3).params == {"lr": 1e-4, "momentum": 0.9}


# -- hyperparameter kicks ---------------------------------------------------------------------


def test_lr_multiply_scales_for_its_window_then_restores_exactly() -> None:
    model, opt, applier = linear()
    train_linear(model, applier, 0, 2)
    record = applier.apply(Kick("lr_multiply", {"factor": 7.0}, 3), step=2)
    assert (record.step, record.action) == (2, "apply")
    assert record.changes == {"lr": ((LR,), (LR * 7.0,))}
    seen, records = train_linear(model, applier, 2, 5)
    assert [lr for _, lr, _, _ in seen] == [LR * 7.0] * 3 + [LR] * 2
    assert [(r.step, r.action, r.changes) for r in records] == [
        (5, "revert", {"lr": ((LR * 7.0,), (LR,))})
    ]
    assert opt.param_groups[0]["lr"] == LR and opt.param_groups[0]["weight_decay"] == WD
    assert applier.active == ()


def test_lr_cycle_traces_one_cycle_sampled_at_step_midpoints() -> None:
    model, _, applier = linear()
    applier.apply(Kick("lr_cycle", {"peak": 3.0, "triangular": 1}, 4), step=0)
    seen, _ = train_linear(model, applier, 0, 5)
    assert [lr for _, lr, _, _ in seen] == [LR * 1.5, LR * 2.5, LR * 2.5, LR * 1.5, LR]

    applier.apply(Kick("lr_cycle", {"peak": 5.0}, 4), step=5)
    seen, _ = train_linear(model, applier, 5, 5)
    cosine = [1 + 4 * (1 - math.cos(2 * math.pi * (i + 0.5) / 4)) / 2 for i in range(4)]
    assert cosine == pytest.approx([1.5857864, 4.4142136, 4.4142136, 1.5857864])
    assert [lr for _, lr, _, _ in seen] == [LR * f for f in cosine] + [LR]


def test_batch_size_sets_accumulation_and_scales_lr_by_the_rule() -> None:
    model, opt, applier = linear()
    record = applier.apply(Kick("batch_size", {"factor": 4, "scale_lr": 0.5}, 2), step=0)
    assert record.changes == {"lr": ((LR,), (LR * 2.0,)), "accumulation_steps": (1, 4)}
    assert applier.accumulation_steps == 4
    seen, records = train_linear(model, applier, 0, 3)
    assert [(lr, k) for _, lr, _, k in seen] == [(LR * 2.0, 4), (LR * 2.0, 4), (LR, 1)]
    assert records[0].changes == {"lr": ((LR * 2.0,), (LR,)), "accumulation_steps": (4, 1)}
    applier.apply(Kick("batch_size", {"factor": 3, "scale_lr": 1.0}, 1), step=3)
    assert (applier.accumulation_steps, opt.param_groups[0]["lr"]) == (3, LR * 3.0)


def test_weight_decay_for_the_rest_of_the_run_never_reverts() -> None:
    model, _, applier = linear()
    applier.apply(Kick("weight_decay", {"factor": 3.0}), step=0)
    seen, records = train_linear(model, applier, 0, 30)
    assert records == []
    assert {(lr, wd) for _, lr, wd, _ in seen} == {(LR, WD * 3.0)}


def test_overlapping_kicks_compose_and_restore_exactly_whatever_order_they_end() -> None:
    model, opt, applier = linear()
    applier.apply(Kick("lr_multiply", {"factor": 10.0}, 2), step=0)
    applier.apply(Kick("weight_decay", {"factor": 2.0}, 3), step=0)
    seen, _ = train_linear(model, applier, 0, 1)
    applier.apply(Kick("batch_size", {"factor": 4, "scale_lr": 1.0}, 3), step=1)
    more, records = train_linear(model, applier, 1, 4)
    assert [(lr, wd) for _, lr, wd, _ in seen + more] == [
        (LR * 10.0, WD * 2.0),
        (LR * 40.0, WD * 2.0),
        (LR * 4.0, WD * 2.0),
        (LR * 4.0, WD),
        (LR, WD),
    ]
    assert [(r.step, r.kick.kind) for r in records] == [
        (2, "lr_multiply"),
        (3, "weight_decay"),
        (4, "batch_size"),
    ]
    assert (opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"]) == (LR, WD)


def test_reapplying_a_kind_replaces_the_kick_in_force() -> None:
    model, _, applier = linear()
    applier.apply(Kick("lr_multiply", {"factor": 10.0}, 5), step=0)
    train_linear(model, applier, 0, 2)
    record = applier.apply(Kick("lr_multiply", {"factor": 3.0}, 2), step=2)
    assert record.changes == {"lr": ((LR * 10.0,), (LR * 3.0,))}
    seen, _ = train_linear(model, applier, 2, 3)
    assert [lr for _, lr, _, _ in seen] == [LR * 3.0, LR * 3.0, LR]


# -- the optimizer switch ---------------------------------------------------------------------


def test_sgd_switch_sets_adamw_aside_and_brings_it_back_with_its_state() -> None:
    t = trainer()
    adamw = t.optimizer
    applier = KickApplier(t.model, adamw, make_optimizer)
    train_trainer(t, applier, 3)
    adamw_steps = [float(adamw.state[p]["step"]) for p in t.model.parameters()]
    before = [p.detach().clone() for p in t.model.parameters()]

    record = applier.apply(Kick("sgd_switch", {"lr": 1e-4, "momentum": 0.8}, 3), step=3)
    sgd = applier.optimizer
    assert type(sgd) is torch.optim.SGD
    assert record.changes == {"optimizer": ("AdamW", "SGD"), "lr": ((1e-5,), (1e-4,))}
    assert [(g["lr"], g["momentum"], g["weight_decay"]) for g in sgd.param_groups] == [
        (1e-4, 0.8, 1.0)
    ]
    seen, records = train_trainer(t, applier, 4)
    assert [name for name, *_ in seen] == ["SGD", "SGD", "SGD", "AdamW"]
    assert len(sgd.state) == 5 and all("momentum_buffer" in s for s in sgd.state.values())
    assert [(r.step, r.changes) for r in records] == [
        (6, {"optimizer": ("SGD", "AdamW"), "lr": ((1e-4,), (1e-5,))})
    ]
    assert applier.optimizer is adamw and adamw.param_groups[0]["lr"] == 1e-5

    # The SGD window moved the weights; AdamW, back for one step, counts on from 3 to 4.
    assert not any(torch.equal(a, p) for a, p in zip(before, t.model.parameters(), strict=True))
    assert [float(adamw.state[p]["step"]) for p in t.model.parameters()] == [
        s + 1 for s in adamw_steps
    ]
    assert adamw_steps == [3.0] * 5


def test_adamw_moments_are_bit_identical_across_the_sgd_window() -> None:
    t = trainer()
    adamw = t.optimizer
    applier = KickApplier(t.model, adamw)
    train_trainer(t, applier, 2)
    moments = [{k: v.clone() for k, v in adamw.state[p].items()} for p in t.model.parameters()]
    applier.apply(Kick("sgd_switch", {"lr": 1e-4}, 2), step=2)
    _, records = train_trainer(t, applier, 2)
    assert len(records) == 1 and applier.optimizer is adamw
    for p, saved in zip(t.model.parameters(), moments, strict=True):
        assert adamw.state[p].keys() == saved.keys() == {"step", "exp_avg", "exp_avg_sq"}
        for key, value in saved.items():
            assert torch.equal(adamw.state[p][key], value), key


# -- gradient transforms ----------------------------------------------------------------------


def single_weight(values: list[float]) -> tuple[nn.Parameter, KickApplier]:
    model = nn.Linear(len(values), 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([values]))
    return model.weight, KickApplier(model, torch.optim.SGD(model.parameters(), lr=0.1))


def test_grokfast_matches_the_ema_formula_by_hand() -> None:
    weight, applier = single_weight([0.0, 0.0])
    applier.apply(Kick("grokfast", {"alpha": 0.5, "lamb": 2.0}, 2), step=0)
    # ema starts at g1 = (1, 2): g <- g1 + 2 * g1 = (3, 6)
    weight.grad = torch.tensor([[1.0, 2.0]])
    applier.before_step(0)
    assert torch.equal(weight.grad, torch.tensor([[3.0, 6.0]]))
    applier.after_step(0)
    # ema = 0.5 * (1, 2) + 0.5 * (3, -1) = (2, 0.5): g <- (3, -1) + 2 * (2, 0.5) = (7, 0)
    weight.grad = torch.tensor([[3.0, -1.0]])
    applier.before_step(1)
    assert torch.equal(weight.grad, torch.tensor([[7.0, 0.0]]))
    applier.after_step(1)
    # The window is over: gradients pass untouched and the filter is gone.
    weight.grad = torch.tensor([[5.0, 5.0]])
    applier.before_step(2)
    assert torch.equal(weight.grad, torch.tensor([[5.0, 5.0]]))
    assert applier.state_dict()["grokfast_ema"] == {}


def test_ortho_grad_removes_the_radial_component_and_keeps_the_norm() -> None:
    weight, applier = single_weight([3.0, 4.0])
    applier.apply(Kick("ortho_grad"), step=0)
    # w = (3, 4), g = (4, 3): g - (24/25) w = (1.12, -0.84), rescaled to |g| = 5 -> (4, -3)
    weight.grad = torch.tensor([[4.0, 3.0]])
    applier.before_step(0)
    torch.testing.assert_close(weight.grad, torch.tensor([[4.0, -3.0]]), rtol=1e-6, atol=1e-6)

    # On a real model, and with noise in force too: ⊥Grad runs last, so the step stays ⊥.
    t = trainer()
    applier = KickApplier(t.model, t.optimizer)
    applier.apply(Kick("ortho_grad"), step=0)
    applier.apply(Kick("grad_noise", {"std": 0.1}), step=0)
    F.cross_entropy(t.model(t.x_train), t.y_train).backward()
    applier.before_step(0)
    for p in t.model.parameters():
        w, g = p.detach(), p.grad
        assert abs(float((w * g).sum() / (w.norm() * g.norm()))) < 1e-5


def test_grad_noise_has_its_own_rng_its_std_and_anneals_as_stated() -> None:
    grads = {}
    for gamma in (0.0, 0.55):
        torch.manual_seed(3)
        weight, applier = single_weight([1.0] * 20_000)
        applier.apply(Kick("grad_noise", {"std": 0.1, "gamma": gamma}, 10), step=4)
        global_rng = torch.get_rng_state()
        for step in range(4, 8):
            weight.grad = torch.zeros_like(weight)
            applier.before_step(step)
            applier.after_step(step)
        assert torch.equal(torch.get_rng_state(), global_rng)
        grads[gamma] = weight.grad
    assert float(grads[0.0].std()) == pytest.approx(0.1, rel=0.03)
    # Same seed, same draws: at t = 3 steps in, the annealed std is 0.1 * (1 + 3) ** -0.275.
    torch.testing.assert_close(grads[0.55], grads[0.0] * 4**-0.275, rtol=1e-5, atol=0)


# -- checkpoints ------------------------------------------------------------------------------


def test_state_dict_round_trip_mid_kick_resumes_bit_for_bit() -> None:
    t = trainer()
    applier = KickApplier(t.model, t.optimizer, make_optimizer)
    train_trainer(t, applier, 2)
    applier.apply(Kick("grokfast"), step=2)
    applier.apply(Kick("grad_noise", {"std": 1e-3, "gamma": 0.55}, 8), step=2)
    applier.apply(Kick("sgd_switch", {"lr": 1e-4}, 4), step=2)
    train_trainer(t, applier, 1)
    applier.apply(Kick("batch_size", {"factor": 2, "scale_lr": 0.5}, 5), step=3)
    applier.apply(Kick("lr_cycle", {"peak": 4.0}, 6), step=3)
    train_trainer(t, applier, 1)

    buffer = io.BytesIO()
    torch.save({"trainer": t.state_dict(), "kicks": applier.state_dict()}, buffer)
    expected, expected_records = train_trainer(t, applier, 8)
    expected_params = [p.detach().clone() for p in t.model.parameters()]

    # Resume into fresh objects, and roll the live ones back as a rollback would.
    fresh = trainer()
    for resumed, kicks in [
        (fresh, KickApplier(fresh.model, fresh.optimizer, make_optimizer)),
        (t, applier),
    ]:
        buffer.seek(0)
        checkpoint = torch.load(buffer, weights_only=True)
        resumed.load_state_dict(checkpoint["trainer"])
        kicks.load_state_dict(checkpoint["kicks"])
        assert [(a.kick.kind, a.start) for a in kicks.active] == [
            ("grokfast", 2),
            ("grad_noise", 2),
            ("sgd_switch", 2),
            ("batch_size", 3),
            ("lr_cycle", 3),
        ]
        assert type(kicks.optimizer) is torch.optim.SGD
        seen, records = train_trainer(resumed, kicks, 8)

        assert seen == expected
        assert [r.to_dict() for r in records] == [r.to_dict() for r in expected_records]
        kinds = [r.kick.kind for r in records]
        assert kinds == ["sgd_switch", "batch_size", "lr_cycle", "grad_noise"]
        for p, q in zip(resumed.model.parameters(), expected_params, strict=True):
            assert torch.equal(p, q)
        assert [a.kick.kind for a in kicks.active] == ["grokfast"]
        assert resumed.optimizer.param_groups[0]["lr"] == 1e-5
