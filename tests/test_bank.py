"""The curve bank: the vectorized trainer must be the single-model trainer, just many at once."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from grokschedule.bench.bank import (
    METRICS,
    BankGrid,
    CurveBank,
    MLPBatch,
    bank_main,
    generate_bank,
    init_mlp,
)
from grokschedule.training.modular.task import ModularMLP, ModularTask, build_model
from grokschedule.training.modular.trainer import ModularTrainer, TrainConfig

torch.set_num_threads(1)


def plain_mlp(batch: MLPBatch, i: int) -> ModularMLP:
    """Model ``i`` of ``batch`` as the torch.nn module the single-model trainer uses."""
    embed, w1, b1, w2, b2 = (param[i] for param in batch.params)
    model = ModularMLP(embed.shape[0], embed.shape[1], w1.shape[1])
    state = {"embed.weight": embed, "hidden.weight": w1.T, "hidden.bias": b1}
    model.load_state_dict(state | {"out.weight": w2.T, "out.bias": b2})
    return model


def test_init_is_bit_identical_to_build_model() -> None:
    torch.manual_seed(7)
    model = build_model("mlp", 23, 8, 16, init_scale=2.0)
    expected = [model.embed.weight, model.hidden.weight.T, model.hidden.bias]
    expected += [model.out.weight.T, model.out.bias]
    for got, want in zip(init_mlp(23, 8, 16, seed=7, init_scale=2.0), expected, strict=True):
        assert torch.equal(got, want)


def test_forward_and_backward_match_the_plain_mlp() -> None:
    x, y, _, _ = ModularTask("div", 23, 0.5, 1).split()
    batch = MLPBatch.create(23, 8, 16, [0, 1, 2], [1.0, 2.0, 0.5], [1e-3] * 3, [1.0] * 3)
    loss, grads = batch.loss_and_grads(x, y)
    logits = batch.logits(x)
    for i in range(3):
        model = plain_mlp(batch, i)
        ref_logits = model(x)
        ref_loss = F.cross_entropy(ref_logits, y)
        ref_loss.backward()
        torch.testing.assert_close(logits[i], ref_logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loss[i], ref_loss)
        ref_grads = [model.embed.weight.grad, model.hidden.weight.grad.T, model.hidden.bias.grad]
        ref_grads += [model.out.weight.grad.T, model.out.bias.grad]
        for got, want in zip((grad[i] for grad in grads), ref_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_adamw_matches_torch_with_per_model_lr_and_decay() -> None:
    lrs, decays = [1e-3, 3e-3, 1e-2], [0.0, 0.5, 1.0]
    batch = MLPBatch.create(5, 4, 6, [0, 1, 2], [1.0] * 3, lrs, decays)
    references = [[param[i].clone().requires_grad_() for param in batch.params] for i in range(3)]
    optimizers = [
        torch.optim.AdamW(params, lr=lr, weight_decay=wd, betas=(0.9, 0.98))
        for params, lr, wd in zip(references, lrs, decays, strict=True)
    ]
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        grads = [torch.randn(param.shape, generator=generator) for param in batch.params]
        batch.adamw_(grads)
        for i, (params, optimizer) in enumerate(zip(references, optimizers, strict=True)):
            for param, grad in zip(params, grads, strict=True):
                param.grad = grad[i].clone()
            optimizer.step()
    for i, params in enumerate(references):
        for got, want in zip((param[i] for param in batch.params), params, strict=True):
            torch.testing.assert_close(got, want.detach(), rtol=1e-6, atol=1e-7)


def test_every_row_reproduces_the_single_model_trainer(tmp_path) -> None:
    grid = BankGrid(
        ops=("sub",),
        ps=(23,),
        train_fractions=(0.5,),
        weight_decays=(0.3, 1.0),
        lrs=(1e-2,),
        seeds=(3,),
        init_scales=(1.0, 2.0),
        embed_dim=8,
        hidden_dim=16,
    )
    # 4 models in batches of at most 3: two batches of 2.
    bank = CurveBank.load(generate_bank(grid, 30, 10, tmp_path / "b.npz", max_models_per_batch=3))
    for i, row in enumerate(grid.rows()):
        config = TrainConfig(**row, max_steps=30, eval_every=10)
        reference = list(ModularTrainer(config).run())
        curve = bank.curve(i)
        assert curve.keys() <= reference[0].keys()
        for key in curve:
            want = np.array([record[key] for record in reference], dtype=np.float32)
            np.testing.assert_allclose(curve[key], want, rtol=1e-4, atol=1e-5, err_msg=key)


def test_metrics_match_evaluate_when_softmax_collapses() -> None:
    """At init_scale 10 the logits are huge: some train losses are exactly 0 in float32 and some
    correct ones are not, which pins the zero_loss_share definition down."""
    config = TrainConfig(op="sub", p=23, seed=3, embed_dim=8, hidden_dim=16, init_scale=10.0)
    reference = ModularTrainer(config).evaluate()
    x, y, x_val, y_val = config.task.split()
    batch = MLPBatch.create(23, 8, 16, [3], [10.0], [1e-3], [1.0])
    got = dict(zip(METRICS, batch.metrics(x, y, x_val, y_val)[0].tolist(), strict=True))
    assert 0 < reference["grok/zero_loss_share"] < reference["train_acc"]
    for name in METRICS:
        want = reference[name if name in reference else f"grok/{name}"]
        assert got[name] == pytest.approx(want, rel=1e-4, abs=1.5 / len(y)), name


@pytest.fixture(scope="module")
def grokking_bank(tmp_path_factory) -> tuple[BankGrid, CurveBank]:
    """p=23 at train fraction 0.8 groks in ~300-450 steps with weight decay 1 (all of seeds 0-5)
    and never without it, so 810 steps separates the two with a wide margin."""
    grid = BankGrid(
        ps=(23,),
        train_fractions=(0.8,),
        weight_decays=(0.0, 1.0),
        lrs=(1e-2,),
        seeds=(0, 1),
        init_scales=(1.0,),
        embed_dim=16,
        hidden_dim=64,
    )
    path = tmp_path_factory.mktemp("bank") / "bank.npz"
    assert generate_bank(grid, 810, 40, path, max_models_per_batch=8) == path
    return grid, CurveBank.load(path)


def test_bank_file_round_trips_with_right_shapes(grokking_bank) -> None:
    grid, bank = grokking_bank
    assert len(bank) == 4
    np.testing.assert_array_equal(bank.steps, [*range(40, 801, 40), 810])
    assert set(bank.metrics) == set(METRICS)
    for values in bank.metrics.values():
        assert values.shape == (4, 21) and values.dtype == np.float32
        assert np.isfinite(values).all()
    for column, values in bank.grid.items():
        assert values.tolist() == [row[column] for row in grid.rows()]
    assert bank.grid["op"].dtype.kind == "U"
    for name in ("train_acc", "val_acc", "val_confidence", "val_correct_prob", "zero_loss_share"):
        assert ((bank.metrics[name] >= 0) & (bank.metrics[name] <= 1)).all(), name


def test_weight_decay_groks_and_no_decay_only_memorizes(grokking_bank) -> None:
    _, bank = grokking_bank
    assert (bank.metrics["train_acc"][:, -1] == 1.0).all()
    for seed in (0, 1):
        plain, decayed = np.flatnonzero(bank.grid["seed"] == seed)  # weight decay 0, then 1
        assert bank.grok_step(plain) is None and bank.metrics["val_acc"][plain].max() < 0.2
        assert bank.grok_step(decayed) is not None and bank.grok_step(decayed) <= 600
        norms = bank.metrics["weight_norm"][:, -1]
        assert norms[decayed] < 0.8 * norms[plain]


def test_grok_step_is_the_first_record_over_threshold() -> None:
    val_acc = np.array([[0.1, 0.96, 0.5, 0.99], [0.1, 0.2, 0.3, 0.4]], dtype=np.float32)
    bank = CurveBank(np.array([10, 20, 30, 40]), {"val_acc": val_acc}, {"op": np.array(["a"] * 2)})
    assert bank.grok_step(0) == 20
    assert bank.grok_step(0, threshold=0.98) == 40
    assert bank.grok_step(1) is None


def test_batches_split_each_data_group_evenly() -> None:
    grid = BankGrid(seeds=(0, 1, 2), weight_decays=(0.0, 0.1, 0.3, 1.0, 2.0), lrs=(1e-3, 3e-3))
    batches = grid.batches(4)  # three groups of 10 models: 3 + 4 + 3 each
    assert [stop - start for start, stop in batches] == [3, 4, 3] * 3
    assert [start for start, _ in batches[1:]] == [stop for _, stop in batches[:-1]]
    rows = grid.rows()
    for start, stop in batches:
        assert len({rows[i]["seed"] for i in range(start, stop)}) == 1
    assert grid.batches(256) == [(0, 10), (10, 20), (20, 30)]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ops", ("add", "pow")),
        ("ps", (12,)),
        ("ps", (47.0,)),
        ("ps", ()),
        ("train_fractions", (1.0,)),
        ("weight_decays", (-0.1,)),
        ("lrs", (0.0,)),
        ("lrs", (math.nan,)),
        ("seeds", (-1,)),
        ("seeds", (0, 0)),
        ("init_scales", (0.0,)),
        ("embed_dim", 0),
        ("hidden_dim", 2.5),
    ],
)
def test_bad_grid_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"BankGrid.{field}"):
        dataclasses.replace(BankGrid(), **{field: value})


def test_generate_bank_rejects_bad_arguments(tmp_path) -> None:
    with pytest.raises(ValueError, match="record_every"):
        generate_bank(BankGrid(), 10, 0, tmp_path / "b.npz")
    with pytest.raises(ValueError, match="cuda_graph"):
        generate_bank(BankGrid(), 10, 5, tmp_path / "b.npz", cuda_graph=True)
    assert not list(tmp_path.iterdir())


def test_cli_writes_a_bank_and_reports_throughput(tmp_path, capsys) -> None:
    out = tmp_path / "cli.npz"
    argv = ["--out", str(out), "--ops", "add", "mul", "--ps", "5", "--weight-decays", "0", "1"]
    argv += ["--lrs", "1e-3", "--seeds", "0", "--embed-dim", "4", "--hidden-dim", "8"]
    assert bank_main([*argv, "--steps", "20", "--record-every", "10"]) == 0
    printed = capsys.readouterr().out
    assert "models 4, model-steps 80" in printed and "ms per model-step" in printed
    bank = CurveBank.load(out)
    assert bank.grid["op"].tolist() == ["add", "add", "mul", "mul"]
    assert bank.steps.tolist() == [10, 20]
    for bad in (["--ps", "4"], ["--steps", "0"], ["--cuda-graph"]):
        with pytest.raises(SystemExit):
            bank_main(["--out", str(tmp_path / "bad.npz"), *bad])
    assert not (tmp_path / "bad.npz").exists()
