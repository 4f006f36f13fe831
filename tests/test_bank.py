"""The curve bank: the vectorized trainer must be the single-model trainer, just many at once."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from grokschedule.bench.bank import (
    GRID_COLUMNS,
    METRICS,
    PRESETS,
    BankGrid,
    CurveBank,
    bank_main,
    generate_bank,
    horizon_summary,
)
from grokschedule.bench.bank_models import (
    BatchedAdamW,
    BatchedSGD,
    ModelBatch,
    init_models,
)
from grokschedule.training.modular.task import ModularTask, build_model
from grokschedule.training.modular.trainer import ModularTrainer, TrainConfig

torch.set_num_threads(1)
ARCH_OPTIMIZERS = [
    ("mlp", "adamw"),
    ("mlp", "sgd"),
    ("transformer", "adamw"),
    ("transformer", "sgd"),
]


@pytest.mark.parametrize("arch", ["mlp", "transformer"])
def test_init_is_bit_identical_to_the_trainers_model(arch: str) -> None:
    batch = ModelBatch.create(arch, 23, 8, 16, [7, 8], [2.0, 1.0], "adamw", [1e-3] * 2, [1.0] * 2)
    for i, (seed, scale) in enumerate([(7, 2.0), (8, 1.0)]):
        torch.manual_seed(seed)
        model = build_model(arch, 23, 8, 16, init_scale=scale)
        for name, param in model.named_parameters():
            assert torch.equal(batch.params[name][i], param), name


def test_init_models_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    init_models("transformer", 5, 4, 8, [1, 2], [1.0, 1.0])
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("arch", ["mlp", "transformer"])
def test_forward_and_gradients_match_the_plain_module(arch: str) -> None:
    x, y, _, _ = ModularTask("div", 23, 0.5, 1).split()
    scales = [1.0, 2.0, 0.5]
    batch = ModelBatch.create(arch, 23, 8, 16, [0, 1, 2], scales, "adamw", [1e-3] * 3, [1.0] * 3)
    loss, grads = batch.loss_and_grads(x, y)
    logits = batch.logits(x)
    for i, model in enumerate(init_models(arch, 23, 8, 16, [0, 1, 2], scales)):
        ref_logits = model(x)
        ref_loss = F.cross_entropy(ref_logits, y)
        ref_loss.backward()
        torch.testing.assert_close(logits[i], ref_logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loss[i], ref_loss)
        for name, param in model.named_parameters():
            torch.testing.assert_close(grads[name][i], param.grad, rtol=1e-4, atol=1e-6)


def _replay_on_torch(batched, make_torch, steps: int = 3) -> None:
    """Step ``batched`` and one torch.optim optimizer per model with the same random gradients;
    the parameters must agree after every step."""
    shapes = {"w": (3, 4, 5), "b": (3, 5)}
    params = {name: torch.randn(shape) for name, shape in shapes.items()}
    batched = batched(params)
    references = [{name: param[i].clone() for name, param in params.items()} for i in range(3)]
    optimizers = [make_torch(i, list(ref.values())) for i, ref in enumerate(references)]
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        grads = {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}
        batched.step_(params, grads)
        for i, (reference, optimizer) in enumerate(zip(references, optimizers, strict=True)):
            for name, param in reference.items():
                param.grad = grads[name][i].clone()
            optimizer.step()
            for name, param in reference.items():
                torch.testing.assert_close(params[name][i], param, rtol=1e-6, atol=1e-7)


def test_adamw_matches_torch_with_per_model_lr_and_decay() -> None:
    lrs, decays = [1e-3, 3e-3, 1e-2], [0.0, 0.5, 1.0]
    _replay_on_torch(
        lambda params: BatchedAdamW(params, torch.tensor(lrs), torch.tensor(decays)),
        lambda i, params: torch.optim.AdamW(
            params, lr=lrs[i], weight_decay=decays[i], betas=(0.9, 0.98)
        ),
    )


def test_sgd_matches_torch_with_per_model_lr_decay_and_momentum() -> None:
    lrs, decays, momentums = [0.1, 0.3, 0.05], [0.0, 0.5, 1e-2], [0.9, 0.0, 0.99]
    _replay_on_torch(
        lambda params: BatchedSGD(
            params, torch.tensor(lrs), torch.tensor(decays), torch.tensor(momentums)
        ),
        lambda i, params: torch.optim.SGD(
            params, lr=lrs[i], weight_decay=decays[i], momentum=momentums[i]
        ),
    )


@pytest.mark.parametrize(("arch", "optimizer"), ARCH_OPTIMIZERS)
def test_every_row_reproduces_the_single_model_trainer(tmp_path, arch, optimizer) -> None:
    # Four models that differ in what the batch keeps per model: two of the optimizer's own
    # hyperparameters, and the init scale for the MLP (the transformer's lr instead).
    per_model = {
        "adamw": {"weight_decays": (0.3, 1.0), "lrs": (1e-2,)},
        "sgd": {"weight_decays": (1e-3,), "lrs": (0.1,), "momentums": (0.0, 0.9)},
    }[optimizer]
    if arch == "mlp":
        per_model |= {"init_scales": (1.0, 2.0)}
    else:
        per_model |= {"lrs": (per_model["lrs"][0], 2 * per_model["lrs"][0])}
    grid = BankGrid(
        archs=(arch,),
        optimizers=(optimizer,),
        ops=("sub",),
        ps=(23,),
        seeds=(3,),
        embed_dims=(8,),
        hidden_dims=(16,),
        **per_model,
    )
    # 4 models in batches of at most 3: two batches of 2.
    path = generate_bank(grid, 30, 10, tmp_path / "b.npz", max_models_per_batch=3)
    bank = CurveBank.load(path)
    assert len(bank) == 4
    for i, row in enumerate(grid.rows()):
        assert (row["arch"], row["optimizer"]) == (arch, optimizer)
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
    batch = ModelBatch.create("mlp", 23, 8, 16, [3], [10.0], "adamw", [1e-3], [1.0])
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
    assert set(bank.grid) == set(GRID_COLUMNS)
    for column, values in bank.grid.items():
        np.testing.assert_array_equal(values, [row[column] for row in grid.rows()])
    assert bank.grid["op"].dtype.kind == "U" and bank.grid["arch"].tolist() == ["mlp"] * 4
    assert np.isnan(bank.grid["momentum"]).all()  # AdamW rows take no momentum
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


def test_grok_step_is_the_first_reported_record_over_threshold() -> None:
    val_acc = np.array([[0.1, 0.96, 0.5, 0.99], [0.1, 0.2, 0.3, 0.4]], dtype=np.float32)
    bank = CurveBank(np.array([10, 20, 30, 40]), {"val_acc": val_acc}, {"op": np.array(["a"] * 2)})
    assert bank.grok_step(0) == 20
    assert bank.grok_step(0, threshold=0.98) == 40
    assert bank.grok_step(1) is None
    late = dataclasses.replace(bank, first_record=np.array([2, 0]))
    assert late.grok_step(0) == 40  # the 0.96 at step 20 was never reported


def _toy_bank() -> CurveBank:
    """Three rows over steps 50..500: memorized (train_acc 1) at 120 -> record 150, at 50, never."""
    steps = np.arange(50, 501, 50)
    train_acc = np.array([[0.5, 0.6, 1.0, *[1.0] * 7], [1.0] * 10, [0.5] * 10], dtype=np.float32)
    val_acc = np.tile(np.linspace(0, 1, 10, dtype=np.float32), (3, 1))
    grid = {"op": np.array(["add", "sub", "mul"]), "seed": np.array([0, 1, 2])}
    return CurveBank(steps, {"train_acc": train_acc, "val_acc": val_acc}, grid)


def test_resampled_reports_every_k_steps_and_the_last() -> None:
    bank = _toy_bank()
    sparse = bank.resampled(every=200)
    np.testing.assert_array_equal(sparse.steps, [200, 400, 500])
    np.testing.assert_array_equal(
        sparse.metrics["val_acc"][0], bank.metrics["val_acc"][0, [3, 7, 9]]
    )
    assert sparse.first_record is None and len(sparse) == 3
    with pytest.raises(ValueError, match="every=75"):
        bank.resampled(every=75)
    with pytest.raises(ValueError, match="every must be"):
        bank.resampled(every=0)


def test_resampled_first_report_only_after_memorization() -> None:
    late = _toy_bank().resampled(every=100, first_after_memorization=True)
    np.testing.assert_array_equal(late.steps, [100, 200, 300, 400, 500])
    assert late.grid["op"].tolist() == ["add", "sub"]  # mul never memorizes: it never reports
    np.testing.assert_array_equal(late.first_record, [1, 0])  # memorized at 150 -> first at 200
    np.testing.assert_array_equal(late.curve(0)["step"], [200, 300, 400, 500])
    np.testing.assert_array_equal(late.curve(1)["step"], [100, 200, 300, 400, 500])
    # A late start survives further thinning: the first kept record at or after it.
    np.testing.assert_array_equal(late.resampled(every=200).first_record, [0, 0])
    np.testing.assert_array_equal(late.resampled(every=200).curve(0)["step"], [200, 400, 500])


def test_horizon_summary_measures_room_after_memorization() -> None:
    summary = horizon_summary(_toy_bank())  # memorized at steps 150 and 50 of 500
    assert summary.startswith("memorized 2/3 rows; horizon / memorization step: median 7x, min 3x")
    assert ">= 50x for 0; grokkers (val_acc >= 0.95) 3" in summary


def test_saved_bank_keeps_late_first_reports(grokking_bank, tmp_path) -> None:
    _, bank = grokking_bank
    late = bank.resampled(every=80, first_after_memorization=True)
    assert len(late) == 4  # all memorize
    loaded = CurveBank.load(late.save(tmp_path / "late.npz"))
    np.testing.assert_array_equal(loaded.first_record, late.first_record)
    for i in range(len(late)):
        curve = loaded.curve(i)
        assert curve["train_acc"][0] >= 0.99 and curve["step"][0] % 80 == 0
        for key, values in late.curve(i).items():
            np.testing.assert_array_equal(curve[key], values)


def test_older_banks_read_with_their_implied_columns(tmp_path) -> None:
    """A bank from before arch/optimizer/momentum were columns: AdamW MLPs."""
    arrays = {"step": np.array([10, 20])}
    arrays |= {f"metric/{name}": np.zeros((2, 2), np.float32) for name in METRICS}
    old_columns = [c for c in GRID_COLUMNS if c not in ("arch", "optimizer", "momentum")]
    arrays |= {f"grid/{c}": np.array(["add", "mul"] if c == "op" else [0, 1]) for c in old_columns}
    np.savez(tmp_path / "old.npz", **arrays)
    bank = CurveBank.load(tmp_path / "old.npz")
    assert (
        bank.grid["arch"].tolist() == ["mlp"] * 2
        and bank.grid["optimizer"].tolist() == ["adamw"] * 2
    )
    assert np.isnan(bank.grid["momentum"]).all() and bank.first_record is None


def test_gpu_layout_reads_as_adamw_mlps(tmp_path) -> None:
    """The shared/banks layout: one metrics array, short column names, sq for x2y2."""
    n, records = 2, 3
    np.savez(
        tmp_path / "gpu.npz",
        steps=np.array([100, 200, 300]),
        metrics=np.random.default_rng(0).random((n, records, 7)).astype(np.float16),
        op=np.array(["add", "sq"]),
        frac=np.array([0.3, 0.5]),
        wd=np.array([0.0, 1.0]),
        lr=np.array([1e-3, 3e-3]),
        seed=np.array([0, 1]),
    )
    bank = CurveBank.load(tmp_path / "gpu.npz")
    assert bank.grid["op"].tolist() == ["add", "x2y2"] and bank.grid["p"].tolist() == [59, 59]
    assert (
        bank.grid["arch"].tolist() == ["mlp"] * 2
        and bank.grid["optimizer"].tolist() == ["adamw"] * 2
    )
    assert "grok/zero_loss_share" not in bank.curve(0) and len(bank.curve(0)["step"]) == records


def test_batches_split_each_data_group_evenly() -> None:
    grid = BankGrid(seeds=(0, 1, 2), weight_decays=(0.0, 0.1, 0.3, 1.0, 2.0), lrs=(1e-3, 3e-3))
    batches = grid.batches(4)  # three groups of 10 models: 3 + 4 + 3 each
    assert [stop - start for start, stop in batches] == [3, 4, 3] * 3
    assert [start for start, _ in batches[1:]] == [stop for _, stop in batches[:-1]]
    rows = grid.rows()
    for start, stop in batches:
        assert len({rows[i]["seed"] for i in range(start, stop)}) == 1
    assert grid.batches(256) == [(0, 10), (10, 20), (20, 30)]


def test_rows_group_by_shape_and_optimizer_and_momentum_is_sgds() -> None:
    grid = BankGrid(
        archs=("mlp", "transformer"),
        optimizers=("adamw", "sgd"),
        seeds=(0,),
        weight_decays=(1.0,),
        lrs=(1e-3,),
        momentums=(0.0, 0.9),
        embed_dims=(8, 16),
        hidden_dims=(32,),
    )
    rows = grid.rows()
    # Per arch: AdamW at each width, no momentum; then SGD at each width, once per momentum.
    assert len(rows) == 2 * (2 + 2 * 2)
    momentums = [row["momentum"] for row in rows[:6]]
    assert np.isnan(momentums[:2]).all() and momentums[2:] == [0.0, 0.9, 0.0, 0.9]
    for start, stop in grid.batches(256):
        keys = {(r["arch"], r["optimizer"], r["embed_dim"]) for r in rows[start:stop]}
        assert len(keys) == 1
    assert len(grid.batches(256)) == 8


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
        ("archs", ("moe",)),
        ("optimizers", ("adam",)),
        ("momentums", (1.0,)),
        ("embed_dims", (0,)),
        ("embed_dim", 0),
        ("hidden_dim", 2.5),
    ],
)
def test_bad_grid_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"BankGrid.{field}"):
        dataclasses.replace(BankGrid(), **{field: value})


def test_transformer_widths_must_split_into_its_heads() -> None:
    with pytest.raises(ValueError, match=r"BankGrid.embed_dims: transformer: .*divisible"):
        BankGrid(archs=("mlp", "transformer"), embed_dims=(6,))
    assert BankGrid(archs=("mlp",), embed_dims=(6,)).embed_dims == (6,)


def test_generate_bank_rejects_bad_arguments(tmp_path) -> None:
    with pytest.raises(ValueError, match="record_every"):
        generate_bank(BankGrid(), 10, 0, tmp_path / "b.npz")
    with pytest.raises(ValueError, match="jobs"):
        generate_bank(BankGrid(), 10, 5, tmp_path / "b.npz", jobs=0)
    with pytest.raises(ValueError, match="max_new_chunks"):
        generate_bank(BankGrid(), 10, 5, tmp_path / "b.npz", max_new_chunks=-1)
    with pytest.raises(ValueError, match="needs a chunk_dir"):
        generate_bank(BankGrid(), 10, 5, tmp_path / "b.npz", max_new_chunks=1)
    with pytest.raises(ValueError, match="grid must be"):
        generate_bank([], 10, 5, tmp_path / "b.npz")
    assert not list(tmp_path.iterdir())


TINY = BankGrid(ops=("add", "mul"), ps=(5,), weight_decays=(0.0, 1.0), lrs=(1e-3,), seeds=(0,))
TINY_SGD = dataclasses.replace(TINY, optimizers=("sgd",), lrs=(0.1,), archs=("transformer",))


def _tiny(grids, path: Path, **kwargs) -> Path | None:
    sized = [dataclasses.replace(g, embed_dims=(4,), hidden_dims=(8,)) for g in grids]
    return generate_bank(sized, 20, 10, path, max_models_per_batch=2, **kwargs)


def test_chunked_generation_resumes_and_merges_to_the_same_bytes(tmp_path) -> None:
    grids = [TINY, TINY_SGD]  # 4 + 4 models in 4 chunks
    whole = _tiny(grids, tmp_path / "whole.npz")
    assert whole is not None
    chunks, out = tmp_path / "chunks", tmp_path / "chunked.npz"
    assert _tiny(grids, out, chunk_dir=chunks, max_new_chunks=1) is None
    assert sorted(p.name for p in chunks.iterdir()) == ["bank.json", "chunk-00000.npy"]
    assert not out.exists()
    assert _tiny(grids, out, chunk_dir=chunks, max_new_chunks=2) is None
    assert _tiny(grids, out, chunk_dir=chunks) == out
    assert out.read_bytes() == whole.read_bytes()
    bank = CurveBank.load(out)
    assert bank.grid["optimizer"].tolist() == ["adamw"] * 4 + ["sgd"] * 4
    assert bank.grid["momentum"][4:].tolist() == [0.9] * 4
    # A rerun with everything saved trains nothing and writes the same file again.
    out.unlink()
    assert _tiny(grids, out, chunk_dir=chunks, max_new_chunks=0) == out
    assert out.read_bytes() == whole.read_bytes()


def test_a_chunk_dir_belongs_to_one_bank(tmp_path) -> None:
    _tiny([TINY], tmp_path / "a.npz", chunk_dir=tmp_path / "chunks", max_new_chunks=1)
    with pytest.raises(ValueError, match=r"another bank.*grids"):
        _tiny([TINY_SGD], tmp_path / "b.npz", chunk_dir=tmp_path / "chunks")


def test_worker_processes_make_the_same_bank(tmp_path) -> None:
    whole = _tiny([TINY, TINY_SGD], tmp_path / "whole.npz")
    parallel = _tiny([TINY, TINY_SGD], tmp_path / "parallel.npz", jobs=2)
    assert parallel is not None and whole is not None
    assert parallel.read_bytes() == whole.read_bytes()


def test_chunks_train_on_one_thread_whatever_the_process_uses(tmp_path) -> None:
    one = _tiny([TINY_SGD], tmp_path / "one.npz")
    torch.set_num_threads(2)
    try:
        two = _tiny([TINY_SGD], tmp_path / "two.npz")
        assert torch.get_num_threads() == 2  # put back afterwards
    finally:
        torch.set_num_threads(1)
    assert one is not None and two is not None and one.read_bytes() == two.read_bytes()


def test_progress_bar_and_chunk_reports(tmp_path, capsys) -> None:
    seen = []
    _tiny([TINY], tmp_path / "b.npz", progress=seen.append, bar=True)
    assert [chunk.index for chunk in seen] == [0, 1]
    assert str(seen[0]).startswith("chunk 1 (mlp/adamw add p=5")
    bar = capsys.readouterr().err
    assert "100%" in bar and "2/2 chunks" in bar


def test_cli_writes_a_bank_and_reports_throughput(tmp_path, capsys) -> None:
    out = tmp_path / "cli.npz"
    argv = ["--out", str(out), "--ops", "add", "mul", "--ps", "5", "--weight-decays", "0", "1"]
    argv += ["--lrs", "1e-3", "--seeds", "0", "--embed-dim", "4", "--hidden-dim", "8"]
    argv += ["--chunk-dir", str(tmp_path / "chunks"), "--no-bar"]
    assert bank_main([*argv, "--steps", "20", "--record-every", "10"]) == 0
    printed = capsys.readouterr().out
    assert "bank: 4 models in 2 chunks" in printed
    assert "model-steps 80" in printed and "ms per model-step" in printed
    assert "rows with non-finite values 0" in printed and "memorized" in printed
    bank = CurveBank.load(out)
    assert bank.grid["op"].tolist() == ["add", "add", "mul", "mul"]
    assert bank.steps.tolist() == [10, 20]
    bad_args = (["--ps", "4"], ["--steps", "0"], ["--jobs", "0"], ["--archs", "moe"])
    for bad in (*bad_args, ["--max-new-chunks", "1"]):
        with pytest.raises(SystemExit):
            bank_main(["--out", str(tmp_path / "bad.npz"), *bad])
    assert not (tmp_path / "bad.npz").exists()


def test_cpu_span_preset_spans_what_users_run() -> None:
    preset = PRESETS["cpu-span"]
    rows = [row for grid in preset.grids for row in grid.rows()]
    values = {column: {row[column] for row in rows} for column in GRID_COLUMNS}
    assert values["arch"] == {"mlp", "transformer"} and values["optimizer"] == {"adamw", "sgd"}
    assert values["op"] == {"add", "sub", "mul", "div", "x2y2"}
    assert min(values["p"]) == 23 and max(values["p"]) >= 59
    assert min(values["train_fraction"]) <= 0.2 and max(values["train_fraction"]) >= 0.8
    assert min(values["weight_decay"]) == 0 and max(values["weight_decay"]) >= 3
    assert len(values["embed_dim"]) >= 2 and len(values["hidden_dim"]) >= 3
    assert len(values["lr"]) >= 3 and len(values["init_scale"]) >= 2
    # AdamW memorizes p=23 within ~160 steps at these lrs: the horizon leaves 50x that.
    assert preset.steps >= 50 * 160


def test_preset_excludes_the_grid_flags(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        bank_main(["--out", str(tmp_path / "b.npz"), "--preset", "cpu-span", "--ps", "23"])
    assert "--preset excludes the grid flags" in capsys.readouterr().err
