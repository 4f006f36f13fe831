"""In-training probes: generalization signals read from the model itself, no test set needed.

Each probe is a small function with a bounded memory footprint and a cost stated in its
docstring; ``ModelProbes`` runs them together on a schedule (``ProbeSchedule``) whose realized
cost is held under a budget (a fraction of training time, over the run) and reports flat
``grok/*`` float metrics:

- ``grok/weight_norm/<layer>``: Frobenius norm of each 2-D weight (weight decay's target);
- ``grok/spectral_entropy/<layer>``, ``grok/eff_rank/<layer>`` and their mean
  ``grok/spectral_entropy``: how spread the singular values of each weight matrix are — a
  memorizing network uses many directions, a generalizing one few (low-rank circuits);
- ``grok/repr_entropy``, ``grok/repr_eff_rank``: the same for the covariance of the readout's
  input activations on a fixed sample of *training* inputs. arXiv 2604.13123 reports this
  normalized entropy crossing ≈ 0.61 about 1,000 steps before generalization in 1-layer
  transformers (and collapsing in MLPs without grokking: necessary, not sufficient);
- ``grok/slow_grad_share``: the share of gradient energy in its slow (EMA) component, the part
  Grokfast (arXiv 2405.20233) amplifies;
- ``grok/moe_pathway_distance``, ``grok/moe_pathway_complexity``: for mixture-of-experts models,
  how alike the expert pathways of training samples are (arXiv 2506.21551: pathways go from
  instance-specific to shared as the model generalizes);
- ``grok/probe_ms``, ``grok/probe_interval``: what the probes cost and how far apart they are.

Singular values come from exact SVD when the matrix is small and from ``torch.svd_lowrank``
(randomized, Halko et al. 2011) otherwise; see ``singular_values`` for how a truncated spectrum
is completed; covariance spectra up to 1,024 dimensions are exact (``covariance_spectrum``).
Everything runs under ``torch.no_grad`` and leaves the global RNGs untouched, so
turning probes on does not change the training trajectory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# min(m, n) up to which singular values are exact. On CPU, svd_lowrank saves little below this,
# and its flat-tail fill overestimates a decaying spectrum's entropy (by 0.08 on the 512 × 256
# hidden layer of a grokked MLP at rank 64: BENCHMARKS.md, "Probes").
EXACT_MAX_DIM = 256
DEFAULT_RANK = 64  # singular values kept by the randomized SVD of a larger matrix
# Covariances up to this size get exact eigenvalues (Gram matrix + eigvalsh): the threshold the
# representation entropy is compared with (≈ 0.61) is tighter than the flat-tail fill's error.
EXACT_COV_DIM = 1024
SVD_SEED = 0
ROUTER_CHOICES = "router_choices"  # attribute a MoE model sets in forward: (N, layers) int64


def singular_values(
    matrix: torch.Tensor, rank: int | None = None, oversample: int = 8, niter: int = 2
) -> torch.Tensor:
    """All ``r = min(m, n)`` singular values of ``matrix`` (descending), exact or estimated.

    Exact (``torch.linalg.svdvals``, O(m·n·r)) when ``rank`` ≥ r, or when ``rank`` is None and
    r ≤ ``EXACT_MAX_DIM``. Otherwise (``rank`` None means ``DEFAULT_RANK``) the top ``rank``
    come from ``torch.svd_lowrank`` (q = rank + oversample, ``niter`` power iterations;
    O(m·n·q) time, O((m + n)·q) extra memory) and the r − rank missing ones are filled in as
    equal values carrying exactly the energy the top ones miss (‖A‖²_F − Σ top σ², taken as 0
    within float32 rounding of the SVD: spread over many values it would fake a tail). That is
    exact when the true tail is flat and otherwise overestimates the spectrum's entropy, since a
    flat tail is the most spread one with that energy (more for ``power`` 1 than 2: unsquared,
    small values weigh more). The randomized part runs on a forked, fixed-seed RNG: repeatable,
    and the caller's RNG stream is not advanced.
    """
    a = matrix.detach().float()
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {tuple(a.shape)}")
    r = min(a.shape)
    if rank is None:
        rank = r if r <= EXACT_MAX_DIM else DEFAULT_RANK
    if rank <= 0:
        raise ValueError(f"rank must be > 0, got {rank}")
    if rank >= r:
        exact: torch.Tensor = torch.linalg.svdvals(a)
        return exact
    q = min(rank + oversample, r)
    devices = [a.device] if a.is_cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(SVD_SEED)
        if a.is_cuda:
            torch.cuda.manual_seed(SVD_SEED)
        _, s, _ = torch.svd_lowrank(a, q=q, niter=niter)
    top = s[:rank]
    total = float(a.double().pow(2).sum())
    tail_energy = total - float(top.double().pow(2).sum())
    if tail_energy <= r * torch.finfo(a.dtype).eps * total:
        tail_energy = 0.0  # float32 rounding of the SVD, not a tail
    tail = torch.full((r - rank,), math.sqrt(tail_energy / (r - rank)), device=a.device)
    return torch.cat([top, tail])


def shannon_entropy(weights: torch.Tensor) -> float:
    """Shannon entropy (nats) of the distribution ``weights / Σ weights``; 0 for no mass."""
    total = weights.double().sum()
    if not total > 0:
        return 0.0
    p = weights.double() / total
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def spectrum_entropy(values: torch.Tensor) -> float:
    """Normalized entropy of a non-negative spectrum, in [0, 1]: ``H(p) / log(len)``. 1 for a
    flat spectrum, 0 when one value holds it all."""
    return shannon_entropy(values) / math.log(len(values)) if len(values) > 1 else 0.0


def entropy_and_rank(values: torch.Tensor) -> tuple[float, float]:
    """``(normalized entropy, effective rank = exp(H))`` of a spectrum, one pass."""
    entropy = shannon_entropy(values)
    return (entropy / math.log(len(values)) if len(values) > 1 else 0.0), math.exp(entropy)


def spectral_entropy(matrix: torch.Tensor, rank: int | None = None, power: int = 1) -> float:
    """Normalized entropy of the singular values of ``matrix``, in [0, 1] (1: identity,
    0: rank one). ``power`` 1 weighs singular values as Roy & Vetterli (2007) do; ``power`` 2
    weighs their squares, i.e. the eigenvalues of ``AᵀA`` (a covariance's spectrum)."""
    return spectrum_entropy(singular_values(matrix, rank).pow(power))


def effective_rank(matrix: torch.Tensor, rank: int | None = None, power: int = 1) -> float:
    """Roy & Vetterli's effective rank ``exp(H)`` (unnormalized entropy): k for a matrix with k
    equal nonzero singular values, between 1 and min(m, n) in general."""
    return math.exp(shannon_entropy(singular_values(matrix, rank).pow(power)))


def layer_weight_norms(model: nn.Module) -> dict[str, float]:
    """Frobenius norm of every 2-D parameter (linear and embedding weights), by name."""
    return {
        name: float(param.detach().float().norm())
        for name, param in model.named_parameters()
        if param.ndim == 2
    }


def representation_entropy(activations: torch.Tensor, rank: int | None = None) -> float:
    """Normalized spectral entropy of the covariance of ``activations`` (N samples × d), as in
    arXiv 2604.13123, normalized by log min(N, d) (log d when N ≥ d, the paper's choice)."""
    return entropy_and_rank(covariance_spectrum(activations, rank))[0]


def covariance_spectrum(activations: torch.Tensor, rank: int | None = None) -> torch.Tensor:
    """The min(N, d) eigenvalues of the (unscaled) covariance of ``activations`` (N × d;
    leading dimensions are flattened into N, e.g. sequence positions).

    Exact when m = min(N, d) ≤ ``EXACT_COV_DIM`` (or ``rank`` ≥ m): ``eigvalsh`` of the m × m Gram
    matrix, O(N·d·m + m³) time, O(m²) memory. Above that, the squared singular values of the
    centered activations from ``singular_values`` (randomized, flat-tail fill), so no d × d
    matrix is formed for wide layers.
    """
    x = activations.detach().float().flatten(0, -2)
    x = x - x.mean(0)
    m = min(x.shape)
    if (rank is None and m <= EXACT_COV_DIM) or (rank is not None and rank >= m):
        gram = x.T @ x if x.shape[1] <= x.shape[0] else x @ x.T
        eigenvalues: torch.Tensor = torch.linalg.eigvalsh(gram).flip(0).clamp(min=0.0)
        return eigenvalues
    return singular_values(x, rank).pow(2)


@dataclass(frozen=True)
class Pathways:
    """Routing pathways of a batch: ``distance`` is the mean pairwise normalized Hamming distance
    between samples' expert sequences (0: all alike), ``complexity`` the normalized entropy of
    the distribution of distinct pathways (0: one pathway for all, 1: all different),
    ``distinct`` the number of distinct pathways."""

    distance: float
    complexity: float
    distinct: int


def routing_pathways(router_choices: torch.Tensor) -> Pathways:
    """Pathway metrics of arXiv 2506.21551 for ``router_choices`` (N samples × L layers, the
    expert index each sample took at each MoE layer; top-1 routing).

    The paper compares pathways by edit distance; with one routed vector per sample and the same
    L layers for all, the sequences align position by position, and Hamming distance over layers
    (divided by L) is the substitution-only edit distance. It is computed from per-layer expert
    counts — pairs agreeing at a layer = Σₑ cₑ(cₑ − 1)/2 — in O(N·L) time and memory, never
    forming the N × N matrix. For complexity we use the entropy of the pathway distribution
    over samples, normalized by log(min(N, E^L)) with E the experts seen, a population view of
    "fewer, shared pathways"; the paper's per-sample layer-to-layer consistency needs expert
    embeddings comparable across layers, which independent per-layer experts do not have.
    """
    choices = router_choices.detach().long().cpu()
    if choices.ndim != 2 or len(choices) < 2:
        raise ValueError(f"need (N >= 2 samples, L layers) choices, got {tuple(choices.shape)}")
    n, layers = choices.shape
    pairs = n * (n - 1) / 2
    disagree = 0.0
    for layer in range(layers):
        counts = torch.bincount(choices[:, layer]).double()
        disagree += pairs - float((counts * (counts - 1) / 2).sum())
    _, path_counts = torch.unique(choices, dim=0, return_counts=True)
    experts = int(choices.max()) + 1
    possible = min(n, experts**layers)
    complexity = shannon_entropy(path_counts) / math.log(possible) if possible > 1 else 0.0
    return Pathways(disagree / (pairs * layers), complexity, len(path_counts))


class SlowGradientShare:
    """Share of gradient energy in its slow component, tracked with a per-parameter EMA.

    ``ema ← α·ema + (1 − α)·g`` every step (α = 0.98 as in Grokfast, a ~50-step window), and

        share = ‖ema‖² / (‖ema‖² + ‖g − ema‖²)

    over all parameters. We use this energy split rather than the cosine between ``g`` and
    ``ema`` because it says how much of the gradient the low-pass filter keeps — what Grokfast's
    ``g + λ·ema`` amplifies — and is ≈ 1 for a constant gradient and ≈ (1 − α)/(1 + α) ≈ 0.01
    for zero-mean i.i.d. noise whatever the dimension, whereas a cosine for noise shrinks with
    the parameter count. Memory: one extra copy of the gradients (fp32 per parameter). Time:
    one fused multiply-add per parameter per step, plus two squared norms when ``measure``.
    It must see every step to be an EMA over steps; updating only every k steps would make it
    an EMA over a k-fold subsample (same mean, k-fold longer window, noisier).
    """

    def __init__(self, alpha: float = 0.98) -> None:
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        self.alpha = alpha
        self._ema: dict[int, torch.Tensor] = {}
        self.share: float | None = None  # as of the latest ``update(..., measure=True)``

    def update(self, params: Iterable[torch.Tensor], measure: bool = False) -> None:
        """Fold this step's gradients (read from ``param.grad``) into the EMA; with ``measure``
        also compute ``share`` from them. Call after backward, before anything edits grads."""
        pairs = [(i, p.grad.detach().float()) for i, p in enumerate(params) if p.grad is not None]
        for i, grad in pairs:
            if i not in self._ema:
                self._ema[i] = grad.clone()  # the update below then leaves it at grad
        emas, grads = [self._ema[i] for i, _ in pairs], [grad for _, grad in pairs]
        if not emas:
            return
        # fused over all tensors: a few kernels per step instead of a Python loop per parameter
        torch._foreach_mul_(emas, self.alpha)
        torch._foreach_add_(emas, grads, alpha=1.0 - self.alpha)
        if measure:
            slow = float(torch.stack(torch._foreach_norm(emas)).pow(2).sum())
            fast_parts = torch._foreach_norm(torch._foreach_sub(grads, emas))
            fast = float(torch.stack(fast_parts).pow(2).sum())
            self.share = slow / (slow + fast) if slow + fast > 0 else None

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "ema": dict(self._ema), "share": self.share}

    def load_state_dict(self, state: Mapping[str, Any], device: torch.device) -> None:
        self.alpha = float(state["alpha"])
        self._ema = {int(i): t.to(device, copy=True) for i, t in state["ema"].items()}
        self.share = state["share"]


class ProbeSchedule:
    """When to probe: at most every ``every`` steps, and only once the training time has paid
    for it, so that over the run the probes cost at most ``budget`` of the training time.

    A probe is due once ``every`` steps have passed since the last one, the training time so far
    pays for every probe taken plus one more at the last one's cost, *and* the training time
    since the last probe pays for one (a saving from cheaper probes is not spent on a short
    interval)::

        budget · Σ step seconds ≥ Σ probe seconds + last probe's seconds
        budget · Σ step seconds since the last probe ≥ last probe's seconds

    so from the second probe on, while a probe costs no more than the one before, the run's total
    and each interval stay within the budget, and the first probe — taken at ``every`` steps,
    before any cost is known — is repaid. A probe that turns out expensive makes the following
    ones rarer (skipped evaluations) instead of slowing training down.

    Why totals and not a gap per probe: stretching each gap to the last probe's cost over a
    running-mean step time (this schedule's earlier rule) never repays the first probe, nor a
    probe dearer than the one before, and slow first steps inflate the running mean and shorten
    the gaps; on the DeepSpeed trainer it took 1.1–1.2 % of the training time over 400 steps at
    a 1 % budget, 1.5 % in a later interval (BENCHMARKS.md, "LM probe costs").

    Times come in as arguments (``step_done``, ``probed``), so the schedule reads no clock.
    ``interval`` is the estimated gap to the next probe at the running-mean step time
    (``grok/probe_interval``); it does not decide when one is due."""

    TOTALS = ("train_seconds", "probe_seconds", "last_cost", "train_at_last")  # checkpointed

    def __init__(self, every: int, budget: float = 0.01) -> None:
        if every <= 0:
            raise ValueError(f"probe_every must be > 0, got {every}")
        if not 0.0 < budget <= 1.0:
            raise ValueError(f"probe_budget must be in (0, 1], got {budget}")
        self.every, self.budget = every, budget
        self.interval = every
        self.last_step = 0
        self.step_seconds: float | None = None  # running mean, for ``interval`` only
        self.train_seconds = 0.0  # Σ step seconds
        self.probe_seconds = 0.0  # Σ probe seconds
        self.last_cost = 0.0  # the last probe's seconds: what the next one is expected to cost
        self.train_at_last = 0.0  # Σ step seconds when the last probe was taken

    def step_done(self, seconds: float) -> None:
        """Record one training step's wall time (summed, and in a ~100-step running mean)."""
        previous = self.step_seconds
        self.step_seconds = seconds if previous is None else 0.99 * previous + 0.01 * seconds
        self.train_seconds += seconds

    def due(self, step: int) -> bool:
        """Whether a probe may be taken at ``step`` (the rule in the class docstring)."""
        run_paid = self.budget * self.train_seconds >= self.probe_seconds + self.last_cost
        interval_paid = self.budget * (self.train_seconds - self.train_at_last) >= self.last_cost
        return step - self.last_step >= self.every and run_paid and interval_paid

    def probed(self, step: int, seconds: float) -> None:
        """Record a probe taken at ``step`` that cost ``seconds``."""
        self.last_step, self.last_cost = step, seconds
        self.probe_seconds += seconds
        self.train_at_last = self.train_seconds
        # training seconds until both budget conditions of ``due`` hold again
        run_owed = (self.probe_seconds + seconds) / self.budget - self.train_seconds
        owed = max(run_owed, seconds / self.budget)
        steps = math.ceil(owed / self.step_seconds) if self.step_seconds else 0
        self.interval = max(self.every, steps)

    def state_dict(self) -> dict[str, Any]:
        keys = ("interval", "last_step", "step_seconds", *self.TOTALS)
        return {k: getattr(self, k) for k in keys}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Also a state saved before the budget was held over the run (no totals): the budget
        is then counted from here, and the first probe after it is unpaid as a run's first."""
        self.interval, self.last_step = int(state["interval"]), int(state["last_step"])
        self.step_seconds = state["step_seconds"]
        for key in self.TOTALS:
            setattr(self, key, float(state.get(key, 0.0)))


class ModelProbes:
    """All probes for one model, on a schedule; ``metrics()`` returns the flat ``grok/*`` dict.

    ``inputs`` is a fixed sample of training inputs (at most ``sample`` rows, chosen with
    ``seed``) for the representation and routing probes; the representation is the input of
    ``readout`` (the model's last ``nn.Linear`` by default), captured by a forward pre-hook
    that lives only for the probe's own forward pass. ``rank`` is passed to ``singular_values``
    and ``covariance_spectrum`` (None: their size-based defaults). The trainer calls
    ``after_backward`` at every step, ``schedule.step_done`` after it and ``metrics`` at its
    evaluations.

    Memory: the slow-gradient EMA (one fp32 copy of the gradients) is the only state that grows
    with the model; a probe call adds one forward pass over ``sample`` inputs, one weight matrix
    and its SVD workspace at a time, and the readout's min(N, d)² Gram matrix.
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        every: int,
        budget: float = 0.01,
        sample: int = 512,
        rank: int | None = None,
        readout: nn.Module | None = None,
        seed: int = 0,
    ) -> None:
        self.model = model
        generator = torch.Generator().manual_seed(seed)
        index = torch.randperm(len(inputs), generator=generator)[:sample]
        self.inputs = inputs[index]
        self.rank = rank
        self.readout = readout or [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        self.schedule = ProbeSchedule(every, budget)
        self.slow_grad = SlowGradientShare()
        self._due_step: int | None = None  # the step ``after_backward`` last found a probe due at

    def after_backward(self, step: int) -> None:
        """Per-step hook, between backward and the optimizer step of step ``step``: feed the raw
        gradients to the slow-gradient EMA, and decide whether ``step`` probes — if so, also
        measure the share the probe reports. ``metrics(step)`` keeps this decision rather than
        asking the schedule again: recording the step's time can make a probe due, and that
        probe would report a share measured at an older step."""
        self._due_step = step if self.schedule.due(step) else None
        self.slow_grad.update(self.model.parameters(), measure=self._due_step is not None)

    @torch.no_grad()
    def weight_metrics(self) -> dict[str, float]:
        """Norm, spectral entropy and effective rank of every 2-D weight, and the mean entropy."""
        out: dict[str, float] = {}
        entropies = []
        for name, param in self.model.named_parameters():
            if param.ndim != 2:
                continue
            entropy, eff_rank = entropy_and_rank(singular_values(param, self.rank))
            entropies.append(entropy)
            out[f"grok/weight_norm/{name}"] = float(param.detach().float().norm())
            out[f"grok/spectral_entropy/{name}"] = entropy
            out[f"grok/eff_rank/{name}"] = eff_rank
        if entropies:
            out["grok/spectral_entropy"] = sum(entropies) / len(entropies)
        return out

    @torch.no_grad()
    def forward_metrics(self) -> dict[str, float]:
        """Representation entropy of the readout's input and, for a MoE model, the pathway
        metrics — both from one forward pass over the fixed sample (eval mode, then restored)."""
        captured: list[torch.Tensor] = []
        handle = self.readout.register_forward_pre_hook(lambda _, args: captured.append(args[0]))
        was_training = self.model.training
        self.model.eval()
        try:
            self.model(self.inputs)
        finally:
            handle.remove()
            self.model.train(was_training)
        entropy, eff_rank = entropy_and_rank(covariance_spectrum(captured[-1], self.rank))
        out = {"grok/repr_entropy": entropy, "grok/repr_eff_rank": eff_rank}
        choices = getattr(self.model, ROUTER_CHOICES, None)
        if choices is not None:
            pathways = routing_pathways(choices)
            out["grok/moe_pathway_distance"] = pathways.distance
            out["grok/moe_pathway_complexity"] = pathways.complexity
            out["grok/moe_pathways"] = float(pathways.distinct)
        return out

    def measure(self) -> dict[str, float]:
        """All probes now, unscheduled: what ``metrics`` reports when one is due (the
        slow-gradient share as of its latest measurement)."""
        out = {**self.weight_metrics(), **self.forward_metrics()}
        if self.slow_grad.share is not None:
            out["grok/slow_grad_share"] = self.slow_grad.share
        return out

    def metrics(self, step: int) -> dict[str, float]:
        """The probe metrics at ``step`` if ``after_backward(step)`` found a probe due (else
        ``{}``), with their cost; one probe per such step."""
        if self._due_step != step:
            return {}
        self._due_step = None
        start = time.perf_counter()
        out = self.measure()
        seconds = time.perf_counter() - start
        self.schedule.probed(step, seconds)
        out["grok/probe_ms"] = 1e3 * seconds
        out["grok/probe_interval"] = float(self.schedule.interval)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"schedule": self.schedule.state_dict(), "slow_grad": self.slow_grad.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        device = next(self.model.parameters()).device
        self.schedule.load_state_dict(state["schedule"])
        self.slow_grad.load_state_dict(state["slow_grad"], device)
