"""Modular-arithmetic grokking tasks: ``(x op y) mod p`` on all pairs, split by a train fraction.

These are the tasks grokking was discovered on (Power et al. 2022): a network fits the training
pairs quickly, then — only under enough weight decay — generalizes to the held-out pairs long
after. They are tiny, exact and cheap, so the scheduler can be exercised end to end on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

OPERATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]] = {
    "add": lambda x, y, p: (x + y) % p,
    "sub": lambda x, y, p: (x - y) % p,
    "mul": lambda x, y, p: (x * y) % p,
    # x / y = x * y^(p-2) mod p (Fermat); y = 0 is excluded from the pairs.
    "div": lambda x, y, p: (x * _modpow(y, p - 2, p)) % p,
    "x2y2": lambda x, y, p: (x * x + y * y) % p,
}
ARCHITECTURES = ("mlp", "transformer", "moe")


def _modpow(base: torch.Tensor, exponent: int, modulus: int) -> torch.Tensor:
    result = torch.ones_like(base)
    base = base % modulus
    while exponent:
        if exponent & 1:
            result = (result * base) % modulus
        base = (base * base) % modulus
        exponent >>= 1
    return result


MAX_P = 1_009  # p² examples: ~1 M pairs, far past what a grokking study needs


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, math.isqrt(n) + 1))


@dataclass(frozen=True)
class ModularTask:
    """One modular-arithmetic problem; validated on construction so bad sweeps fail fast."""

    op: str = "add"
    p: int = 47
    train_fraction: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.op not in OPERATIONS:
            raise ValueError(f"op must be one of {sorted(OPERATIONS)}, got {self.op!r}")
        if not 2 <= self.p <= MAX_P:
            raise ValueError(f"p must be a prime in [2, {MAX_P}] (p² examples), got {self.p}")
        if not _is_prime(self.p):
            raise ValueError(f"p must be a prime (every op needs a field), got {self.p}")
        if not 0.0 < self.train_fraction < 1.0:
            raise ValueError(f"train_fraction must be in (0, 1), got {self.train_fraction}")

    def split(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(x_train, y_train, x_val, y_val)``; inputs are ``(N, 2)`` operand pairs."""
        a, b = torch.meshgrid(torch.arange(self.p), torch.arange(self.p), indexing="ij")
        pairs = torch.stack([a.flatten(), b.flatten()], dim=1)
        if self.op == "div":
            pairs = pairs[pairs[:, 1] != 0]
        labels = OPERATIONS[self.op](pairs[:, 0], pairs[:, 1], self.p)
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(pairs), generator=generator)
        n_train = max(1, round(self.train_fraction * len(pairs)))
        train, val = order[:n_train], order[n_train:]
        return pairs[train], labels[train], pairs[val], labels[val]


class ModularMLP(nn.Module):
    """Embed both operands, concatenate, one hidden ReLU layer, logits over the p residues."""

    def __init__(self, p: int, embed_dim: int = 128, hidden_dim: int = 512) -> None:
        super().__init__()
        self.embed = nn.Embedding(p, embed_dim)
        self.hidden = nn.Linear(2 * embed_dim, hidden_dim)
        self.out = nn.Linear(hidden_dim, p)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(pairs).flatten(1)
        return self.out(torch.relu(self.hidden(tokens)))


class ModularTransformer(nn.Module):
    """A one-layer transformer over the sequence ``x, y, =``, read out at the ``=`` position."""

    def __init__(self, p: int, embed_dim: int = 128, hidden_dim: int = 512, heads: int = 4) -> None:
        super().__init__()
        self.equals_token = p
        self.embed = nn.Embedding(p + 1, embed_dim)
        self.position = nn.Parameter(torch.randn(3, embed_dim) * 0.02)
        self.block = nn.TransformerEncoderLayer(
            embed_dim, heads, hidden_dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.out = nn.Linear(embed_dim, p)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        equals = torch.full(
            (len(pairs), 1), self.equals_token, dtype=pairs.dtype, device=pairs.device
        )
        sequence = self.embed(torch.cat([pairs, equals], dim=1)) + self.position
        return self.out(self.block(sequence)[:, -1])


class ModularMoE(nn.Module):
    """Embed both operands, then ``layers`` residual mixture-of-experts blocks, then logits.

    Each block routes every sample to one of ``experts`` small ReLU MLPs (top-1, Switch-style:
    the expert's output is scaled by its softmax gate so the router gets a gradient), hidden
    width ``hidden_dim // experts`` so a block costs about one dense hidden layer. There is no
    load-balancing loss: whether routing spreads or collapses is part of what the pathway probe
    (``training.probes.routing_pathways``) measures. The last forward's expert choices are
    kept in ``router_choices`` ``(N, layers)``, detached.
    """

    def __init__(
        self, p: int, embed_dim: int = 128, hidden_dim: int = 512, experts: int = 4, layers: int = 2
    ) -> None:
        super().__init__()
        width, expert_hidden = 2 * embed_dim, max(1, hidden_dim // experts)
        self.embed = nn.Embedding(p, embed_dim)
        self.routers = nn.ModuleList(nn.Linear(width, experts) for _ in range(layers))
        self.experts = nn.ModuleList(
            nn.ModuleList(
                nn.Sequential(
                    nn.Linear(width, expert_hidden), nn.ReLU(), nn.Linear(expert_hidden, width)
                )
                for _ in range(experts)
            )
            for _ in range(layers)
        )
        self.out = nn.Linear(width, p)
        self.router_choices: torch.Tensor | None = None

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        h = self.embed(pairs).flatten(1)
        choices = []
        for router, experts in zip(self.routers, self.experts, strict=True):
            gates = router(h).softmax(-1)
            gate, choice = gates.max(-1)
            mixed = torch.zeros_like(h)
            for e, expert in enumerate(experts):
                rows = (choice == e).nonzero().squeeze(1)
                if len(rows):
                    mixed = mixed.index_add(0, rows, gate[rows, None] * expert(h[rows]))
            h = h + mixed
            choices.append(choice)
        self.router_choices = torch.stack(choices, dim=1).detach()
        return self.out(h)


def build_model(
    arch: str, p: int, embed_dim: int = 128, hidden_dim: int = 512, init_scale: float = 1.0
) -> nn.Module:
    """Build a model; ``init_scale`` > 1 enlarges the initial weights, which lengthens the
    memorization plateau (Omnigrok, arXiv 2210.01117) and so makes grokking easier to see."""
    if arch == "mlp":
        model: nn.Module = ModularMLP(p, embed_dim, hidden_dim)
    elif arch == "transformer":
        model = ModularTransformer(p, embed_dim, hidden_dim)
    elif arch == "moe":
        model = ModularMoE(p, embed_dim, hidden_dim)
    else:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")
    if init_scale <= 0:
        raise ValueError(f"init_scale must be > 0, got {init_scale}")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(init_scale)
    return model
