"""In-training probes (grokschedule.training.probes): each quantity on inputs whose answer is
known, and the trainer integration (keys present only when on, budget, checkpoint)."""

import copy
import math

import pytest
import torch

from grokschedule.training.modular.task import build_model
from grokschedule.training.modular.trainer import ModularTrainer, TrainConfig
from grokschedule.training.probes import (
    ModelProbes,
    SlowGradientShare,
    covariance_spectrum,
    effective_rank,
    entropy_and_rank,
    layer_weight_norms,
    representation_entropy,
    routing_pathways,
    singular_values,
    spectral_entropy,
)

TINY = {"p": 23, "embed_dim": 16, "hidden_dim": 32, "eval_every": 5, "max_steps": 20}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _low_rank(m: int, n: int, k: int, seed: int = 0) -> torch.Tensor:
    """An m × n matrix with exactly k equal nonzero singular values."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, k, generator=g))
    v, _ = torch.linalg.qr(torch.randn(n, k, generator=g))
    return 3.0 * u @ v.T


@pytest.mark.parametrize("rank", [None, 16])
def test_effective_rank_of_a_rank_k_matrix_is_k(rank: int | None) -> None:
    matrix = _low_rank(300, 200, 5)
    assert effective_rank(matrix, rank=rank) == pytest.approx(5.0, rel=1e-3)


def test_entropy_is_one_for_identity_and_zero_for_rank_one() -> None:
    assert spectral_entropy(torch.eye(50)) == pytest.approx(1.0)
    assert spectral_entropy(torch.eye(200), rank=20) == pytest.approx(1.0, abs=1e-4)
    assert spectral_entropy(torch.outer(torch.arange(1.0, 41), torch.ones(30))) < 1e-3


def test_randomized_svd_matches_exact_on_a_decaying_spectrum() -> None:
    g = torch.Generator().manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(400, 200, generator=g))
    v, _ = torch.linalg.qr(torch.randn(200, 200, generator=g))
    matrix = u @ torch.diag(0.9 ** torch.arange(200.0)) @ v.T
    exact = singular_values(matrix, rank=200)
    approx = singular_values(matrix, rank=40)
    assert torch.allclose(approx[:40], exact[:40], rtol=1e-3, atol=1e-5)
    # the filled-in flat tail overestimates the entropy until the kept values hold the spectrum
    exact_entropy = spectral_entropy(matrix, rank=200)
    assert spectral_entropy(matrix, rank=20) > exact_entropy + 0.1
    assert spectral_entropy(matrix, rank=80) == pytest.approx(exact_entropy, abs=0.005)
    covariance = spectral_entropy(matrix, rank=200, power=2)
    assert spectral_entropy(matrix, rank=40, power=2) == pytest.approx(covariance, abs=0.001)
    assert len(approx) == 200  # the tail is filled in, so the normalization is the same


def test_randomized_svd_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    singular_values(torch.randn(300, 300, generator=torch.Generator().manual_seed(0)), rank=8)
    assert torch.equal(torch.rand(3), expected)


def test_representation_entropy_sees_a_collapsed_covariance() -> None:
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(2000, 20, generator=g)
    collapsed = torch.randn(2000, 1, generator=g) @ torch.randn(1, 20, generator=g)
    assert representation_entropy(spread) > 0.95
    assert representation_entropy(collapsed + 1e-4 * spread) < 0.05


def test_covariance_spectrum_is_exact_and_matches_the_randomized_path() -> None:
    g = torch.Generator().manual_seed(2)
    activations = torch.randn(300, 40, generator=g) @ torch.randn(40, 40, generator=g) + 5.0
    centered = activations - activations.mean(0)
    exact = torch.linalg.svdvals(centered.double()).pow(2).float()
    assert torch.allclose(covariance_spectrum(activations), exact, rtol=1e-3, atol=1e-2)
    few_samples = activations[:25]  # N < d: the N × N Gram matrix, min(N, d) = 25 values
    assert len(covariance_spectrum(few_samples)) == 25
    assert representation_entropy(activations) == pytest.approx(
        entropy_and_rank(covariance_spectrum(activations, rank=30))[0], abs=0.01
    )


def test_layer_weight_norms_cover_2d_weights_only() -> None:
    norms = layer_weight_norms(build_model("mlp", 23, 16, 32))
    assert set(norms) == {"embed.weight", "hidden.weight", "out.weight"}


def _feed(tracker: SlowGradientShare, grads: list[torch.Tensor]) -> float:
    param = torch.nn.Parameter(torch.zeros_like(grads[0]))
    for i, grad in enumerate(grads):
        param.grad = grad
        tracker.update([param], measure=i == len(grads) - 1)
    assert tracker.share is not None
    return tracker.share


def test_slow_share_is_one_for_a_constant_gradient_and_small_for_noise() -> None:
    constant = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    assert _feed(SlowGradientShare(), [constant] * 300) == pytest.approx(1.0)
    g = torch.Generator().manual_seed(1)
    noise = [torch.randn(1000, generator=g) for _ in range(300)]
    assert _feed(SlowGradientShare(), noise) < 0.03  # (1 - a) / (1 + a) = 0.0101 expected


def test_pathways_all_alike_all_different_and_in_between() -> None:
    same = routing_pathways(torch.tensor([[1, 2, 0]] * 10))
    assert (same.distance, same.complexity, same.distinct) == (0.0, 0.0, 1)
    # 4 samples on 4 disjoint pathways over 2 layers: every pair differs at both layers
    distinct = routing_pathways(torch.tensor([[0, 0], [1, 1], [2, 2], [3, 3]]))
    assert (distinct.distance, distinct.complexity, distinct.distinct) == (1.0, 1.0, 4)
    # two groups that differ only at layer 1: half of the pairs differ at 1 of 2 layers
    halves = routing_pathways(torch.tensor([[0, 0], [0, 0], [0, 1], [0, 1]]))
    assert halves.distance == pytest.approx((4 / 6) * 0.5)
    assert halves.complexity == pytest.approx(math.log(2) / math.log(4))


def test_a_probe_reports_the_share_measured_at_its_own_step() -> None:
    """Whether a step probes is decided once, in ``after_backward``, before the step's time is
    recorded: a probe the recorded time makes due waits for the next step, whose gradients its
    slow-gradient share is measured from, instead of reporting the share of an older step."""
    model = torch.nn.Linear(4, 4, bias=False)
    probes = ModelProbes(model, torch.randn(8, 4), every=1, budget=0.01)
    reference = SlowGradientShare()
    shares = {}
    for step, (sign, seconds) in enumerate([(1.0, 0.0), (-1.0, 1e6), (-1.0, 1.0)], start=1):
        model.weight.grad = torch.full_like(model.weight, sign)
        probes.after_backward(step)
        reference.update([model.weight], measure=True)
        probes.schedule.step_done(seconds)  # step 1 free: step 2's backward cannot pay for a probe
        shares[step] = probes.metrics(step).get("grok/slow_grad_share")
        assert probes.metrics(step) == {}  # one probe per step
    assert shares[1] == pytest.approx(1.0) and shares[2] is None  # due only once 1e6 s counted
    assert shares[3] == pytest.approx(reference.share) and reference.share < 0.5


def test_trainer_reports_probe_keys_only_when_on() -> None:
    *_, off = ModularTrainer(TrainConfig(**TINY)).run()
    assert not [k for k in off if "probe" in k or "spectral" in k or "slow_grad" in k]
    *_, on = ModularTrainer(TrainConfig(**TINY, probe_every=5, probe_budget=1.0)).run()
    for key in (
        "grok/spectral_entropy",
        "grok/eff_rank/hidden.weight",
        "grok/weight_norm/out.weight",
        "grok/repr_entropy",
        "grok/slow_grad_share",
        "grok/probe_ms",
    ):
        assert isinstance(on[key], float) and math.isfinite(on[key]), key
    assert 0.0 < on["grok/slow_grad_share"] < 1.0


def test_probes_do_not_change_the_training_trajectory() -> None:
    *_, off = ModularTrainer(TrainConfig(**TINY)).run()
    *_, on = ModularTrainer(TrainConfig(**TINY, probe_every=5, probe_budget=1.0)).run()
    assert on["train_loss"] == off["train_loss"] and on["val_loss"] == off["val_loss"]


def test_a_tiny_budget_skips_probes() -> None:
    config = TrainConfig(**TINY, probe_every=5, probe_budget=1e-6)
    reports = list(ModularTrainer(config).run())
    probed = [r["step"] for r in reports if "grok/probe_ms" in r]
    assert probed == [5]  # the first probe measures the cost; the next is millions of steps away
    assert reports[0]["grok/probe_interval"] > 1_000


def test_moe_arch_trains_and_reports_pathways() -> None:
    config = TrainConfig(**TINY, arch="moe", probe_every=5, probe_budget=1.0)
    trainer = ModularTrainer(config)
    reports = list(trainer.run())
    assert reports[-1]["train_loss"] < reports[0]["train_loss"]
    last = reports[-1]
    assert 0.0 <= last["grok/moe_pathway_distance"] <= 1.0
    assert 0.0 <= last["grok/moe_pathway_complexity"] <= 1.0
    assert 1 <= last["grok/moe_pathways"] <= 16  # 4 experts, 2 layers
    routers = trainer.model.router_choices
    assert routers is not None and routers.shape == (len(trainer.x_train), 2)


def test_checkpoint_carries_the_slow_gradient_ema() -> None:
    config = TrainConfig(**TINY, probe_every=5, probe_budget=1.0)
    first = ModularTrainer(config)
    for _ in range(12):
        first.train_step()
    state = copy.deepcopy(first.state_dict())  # as a checkpoint would: tensors are shared
    resumed = ModularTrainer(config)
    resumed.load_state_dict(state)
    first.train_step()
    resumed.train_step()
    timing = ("grok/probe_ms", "grok/probe_interval")
    got, want = resumed.evaluate(), first.evaluate()
    assert "grok/slow_grad_share" in got
    assert {k: v for k, v in got.items() if k not in timing} == pytest.approx(
        {k: v for k, v in want.items() if k not in timing}, rel=1e-6
    )


def test_probe_config_is_validated() -> None:
    with pytest.raises(ValueError, match="probe_every"):
        TrainConfig(probe_every=0)
    with pytest.raises(ValueError, match="probe_budget"):
        TrainConfig(probe_every=10, probe_budget=0.0)
    assert TrainConfig.from_mapping({"probe_every": 10, "unknown": 1}).probe_every == 10
