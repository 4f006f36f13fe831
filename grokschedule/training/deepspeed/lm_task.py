"""Causal-LM fine-tuning on synthetic text tasks that grok: a rule learned from held-out pairs.

Needs the optional extra (``transformers``, ``peft``); nothing is downloaded. The model is a tiny
Llama built from a config in code, the tokenizer a character vocabulary written here. Two
problems (``lm_op``), each a memorize-then-generalize task written as text:

- ``add``: ``"a+b="`` → ``(a + b) mod p`` — the grokking task of Power et al. as characters.
- ``compose``: ``"1302*2031="`` → the composition of two permutations of ``perm_size`` items,
  each written as the sequence of its images — a rule applied to sequences, the kind of format
  transformation fine-tuners meet; the group S4 has 576 pairs, S5 14,400.

Validation holds out pairs (combinations never seen in training); the probe set asks for three
operands, ``"a+b+c="`` or ``"x*y*z="``, a composition of the rule never seen in training.
Both are built by ``grokschedule.training.probe_sets.build_probe_sets``.

``lm_experts`` swaps the Llama for a tiny Mixtral-style mixture of experts (top-2 routing), whose
router choices the trainer's probes read as routing pathways (``router_choices``).

An optional LoRA adapter (``lora_rank``) trains only low-rank updates of every linear layer.
``with_adapter_rank`` + ``load_grown`` raise its rank on a plateau (e.g. 8 → 32) without changing
what the model computes: the old factors are copied into the leading rows/columns and the new
columns of B are zero. ``lora_alpha`` is kept at ``2 × rank`` so the LoRA scaling stays 2.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from grokschedule.training.deepspeed.task import ExampleStats, Split
from grokschedule.training.probe_sets import build_probe_sets

PAD, BOS, EOS = 0, 1, 2
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]  # LoRA targets of the MoE model
CHARS = "0123456789+=*"
IGNORE = -100


class CharTokenizer:
    """Pad, begin, end, then one id per character of ``CHARS``."""

    vocab_size = 3 + len(CHARS)

    def encode(self, text: str) -> list[int]:
        unknown = set(text) - set(CHARS)
        if unknown:
            raise ValueError(f"characters {sorted(unknown)} are not in the vocabulary {CHARS!r}")
        return [3 + CHARS.index(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(CHARS[i - 3] for i in ids if i >= 3)


OPS = ("add", "compose")
Problem = tuple[str, str]  # (prompt, answer)


def addition_problems(p: int, seed: int, n_probe: int = 256) -> tuple[list[Problem], list[Problem]]:
    """Every ``"a+b="`` mod ``p`` in a seeded order, and ``n_probe`` three-operand sums."""
    pairs = [(a, b) for a in range(p) for b in range(p)]
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))
    problems = [(f"{a}+{b}=", str((a + b) % p)) for a, b in (pairs[i] for i in order)]
    triples = torch.randint(p, (n_probe, 3), generator=torch.Generator().manual_seed(seed + 1))
    probe = [(f"{a}+{b}+{c}=", str((a + b + c) % p)) for a, b, c in triples.tolist()]
    return problems, probe


def composition_problems(
    size: int, seed: int, n_probe: int = 256
) -> tuple[list[Problem], list[Problem]]:
    """Every ``"x*y="`` of two permutations of ``size`` items, ``(x*y)[i] = x[y[i]]``, in a
    seeded order, and ``n_probe`` compositions of three."""
    perms = list(itertools.permutations(range(size)))

    def text(perm: tuple[int, ...]) -> str:
        return "".join(map(str, perm))

    def compose(x: tuple[int, ...], y: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(x[i] for i in y)

    pairs = [(x, y) for x in perms for y in perms]
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))
    problems = [
        (f"{text(x)}*{text(y)}=", text(compose(x, y))) for x, y in (pairs[i] for i in order)
    ]
    picks = torch.randint(
        len(perms), (n_probe, 3), generator=torch.Generator().manual_seed(seed + 1)
    )
    probe = [
        (
            f"{text(perms[a])}*{text(perms[b])}*{text(perms[c])}=",
            text(compose(compose(perms[a], perms[b]), perms[c])),
        )
        for a, b, c in picks.tolist()
    ]
    return problems, probe


@dataclass(frozen=True)
class LMTaskConfig:
    """The text task and the tiny Llama; keys are prefixed ``lm_`` in a flat trial config."""

    op: str = "add"  # "add" (mod p) or "compose" (permutations of perm_size items)
    p: int = 23
    perm_size: int = 4
    train_fraction: float = 0.5
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    lora_rank: int | None = None  # None: full fine-tuning
    experts: int | None = None  # None: a dense Llama; else a Mixtral-style MoE with this many
    seed: int = 0

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"lm_op must be one of {OPS}, got {self.op!r}")
        if not 2 <= self.perm_size <= 6:
            raise ValueError(
                f"lm_perm_size must be in [2, 6] (6! = 720 items), got {self.perm_size}"
            )
        if self.p < 2:
            raise ValueError(f"lm_p must be >= 2, got {self.p}")
        if not 0 < self.train_fraction < 1:
            raise ValueError(f"lm_train_fraction must be in (0, 1), got {self.train_fraction}")
        if self.hidden % self.heads:
            raise ValueError(f"lm_hidden {self.hidden} must be divisible by lm_heads {self.heads}")
        if self.lora_rank is not None and self.lora_rank <= 0:
            raise ValueError(f"lora_rank must be > 0 or None, got {self.lora_rank}")
        if self.experts is not None and not (isinstance(self.experts, int) and self.experts >= 2):
            raise ValueError(f"lm_experts must be an int >= 2 or None, got {self.experts!r}")

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> LMTaskConfig:
        """``lm_p``, ``lm_lora_rank``, ...; the seed is the trial's ``seed``."""
        names = [f.name for f in fields(cls) if f.name != "seed"]
        values = {name: config[f"lm_{name}"] for name in names if f"lm_{name}" in config}
        if "seed" in config:
            values["seed"] = config["seed"]
        return cls(**values)


def encode_examples(
    problems: list[tuple[str, str]], tokenizer: CharTokenizer, length: int | None = None
) -> Split:
    """``(inputs, targets)``: ``bos prompt answer eos`` right-padded to ``length`` (default: the
    longest example); the target at position t is the token at t + 1 on the answer and eos,
    ``IGNORE`` elsewhere."""
    if length is None:
        length = max(len(prompt) + len(answer) for prompt, answer in problems) + 2
    inputs = torch.full((len(problems), length), PAD, dtype=torch.long)
    targets = torch.full((len(problems), length), IGNORE, dtype=torch.long)
    for i, (prompt, answer) in enumerate(problems):
        ids = [BOS, *tokenizer.encode(prompt), *tokenizer.encode(answer), EOS]
        inputs[i, : len(ids)] = torch.tensor(ids)
        start = len(prompt)  # position of the last prompt token, which predicts the answer
        targets[i, start : len(ids) - 1] = torch.tensor(ids[start + 1 :])
    return inputs, targets


class LMTask:
    """A grokking problem as text for a causal LM (see the module docstring)."""

    name = "lm"

    def __init__(self, config: LMTaskConfig, activation_checkpointing: bool = False) -> None:
        self.config = config
        self.activation_checkpointing = activation_checkpointing
        self.tokenizer = CharTokenizer()
        if config.op == "add":
            pairs, probe = addition_problems(config.p, config.seed)
        else:
            pairs, probe = composition_problems(config.perm_size, config.seed)
        operator = "+" if config.op == "add" else "*"
        try:
            sets = build_probe_sets(
                pairs + probe,
                harder=lambda example: example[0].count(operator) > 1,  # more operands
                val_fraction=1.0 - config.train_fraction,
                seed=config.seed,
            )
        except ValueError as error:  # in the task's own keys, as check_task words it
            size = f"lm_p={config.p}" if config.op == "add" else f"lm_perm_size={config.perm_size}"
            raise ValueError(
                f"task 'lm': the 'val' set is empty ({error}) with lm_op={config.op!r}, {size}, "
                f"lm_train_fraction={config.train_fraction}; lower lm_train_fraction or raise "
                f"{size.split('=')[0]}"
            ) from None
        self.probe_set_sizes = sets.report
        # Each split padded to its own longest example (bos, prompt, answer, eos): the
        # three-operand probe is longer, and padding training to it would cost a third more.
        self._train = encode_examples(sets.train, self.tokenizer)
        self._val = encode_examples(sets.probe_sets["val"], self.tokenizer)
        self._probe = encode_examples(sets.probe_sets["probe"], self.tokenizer)
        self.length = max(split[0].shape[1] for split in (self._train, self._val, self._probe))
        self.tokens_per_example = self._train[0].shape[1]

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any], activation_checkpointing: bool) -> LMTask:
        return cls(LMTaskConfig.from_mapping(config), activation_checkpointing)

    @property
    def adapter_rank(self) -> int | None:
        return self.config.lora_rank

    def with_adapter_rank(self, rank: int) -> LMTask:
        """The same task and data with a LoRA adapter of ``rank``: larger to grow it
        (``load_grown`` fills it), or smaller to rebuild a checkpoint or rollback point taken at
        that rank (the engine loads it); the function is kept only by growing."""
        if self.config.lora_rank is None:
            raise ValueError("the model has no LoRA adapter (lora_rank is None) to grow")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
            raise ValueError(f"rank must be an int > 0, got {rank!r}")
        return LMTask(replace(self.config, lora_rank=rank), self.activation_checkpointing)

    def build_model(self) -> nn.Module:
        from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

        c = self.config
        shape: dict[str, Any] = {
            "vocab_size": self.tokenizer.vocab_size,
            "hidden_size": c.hidden,
            "intermediate_size": 4 * c.hidden,
            "num_hidden_layers": c.layers,
            "num_attention_heads": c.heads,
            "num_key_value_heads": c.heads,
            "max_position_embeddings": self.length,
            "pad_token_id": PAD,
            "bos_token_id": BOS,
            "eos_token_id": EOS,
            "tie_word_embeddings": True,
        }
        model: nn.Module
        if c.experts is None:
            model = LlamaForCausalLM(LlamaConfig(**shape))
        else:  # each expert as wide as the dense MLP would be / top-k: the same active width
            top_k = min(2, c.experts)
            shape["intermediate_size"] = 4 * c.hidden // top_k
            moe = MixtralConfig(**shape, num_local_experts=c.experts, num_experts_per_tok=top_k)
            model = MixtralForCausalLM(moe)
        if self.activation_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        if c.lora_rank is not None:
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(
                r=c.lora_rank,
                lora_alpha=2 * c.lora_rank,
                lora_dropout=0.0,
                # A MoE's experts are fused 3-D weights and its router a gate that must stay
                # sharp: adapt its attention; adapt every linear layer of a dense model.
                target_modules=ATTENTION if c.experts is not None else "all-linear",
            )
            model = get_peft_model(model, lora)
        return model

    def load_grown(self, model: nn.Module, old_state: Mapping[str, torch.Tensor]) -> None:
        """Load a smaller adapter's state into ``model``: leading rows of each ``lora_A``,
        leading columns of each ``lora_B`` (the rest of B zero), everything else as is."""
        state = model.state_dict()
        for key, new in state.items():
            old = old_state[key].to(new.dtype)
            if old.shape == new.shape:
                new.copy_(old)
            elif ".lora_A." in key:
                new[: old.shape[0]].copy_(old)
            elif ".lora_B." in key:
                new.zero_()
                new[:, : old.shape[1]].copy_(old)
            else:
                raise ValueError(f"{key}: cannot grow {tuple(old.shape)} into {tuple(new.shape)}")
        model.load_state_dict(state)

    def train_split(self) -> Split:
        return self._train

    def eval_splits(self) -> dict[str, Split]:
        return {"val": self._val, "probe": self._probe}

    def stats(
        self, model: Callable[..., Any], inputs: torch.Tensor, targets: torch.Tensor
    ) -> ExampleStats:
        """Per example: mean token loss over the answer and eos, exact match of all of them; in
        evaluation (no grad) also the sums the probe-set signals are made of (``ExampleStats``)."""
        logits = model(input_ids=inputs, attention_mask=inputs != PAD).logits.float()
        mask = targets != IGNORE
        tokens = mask.sum(1).clamp(min=1)
        token_loss = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        loss = (token_loss * mask).sum(1) / tokens
        right = (logits.detach().argmax(-1) == targets) | ~mask
        prob = torch.exp(-token_loss.detach())  # p(target token) = exp(-CE), no softmax needed
        stats = ExampleStats(
            loss=loss,
            correct=right.all(1),
            correct_prob=(prob * mask).sum(1) / tokens,
            zero_loss=loss.detach() == 0,
        )
        if not torch.is_grad_enabled():  # evaluation: one softmax more, no forward more
            top = logits.softmax(-1).amax(-1)  # the greedy token's probability
            stats.token_loss = (token_loss * mask).sum(1)
            stats.tokens = mask.sum(1)
            stats.confidence = (top * mask).sum(1) / tokens
        return stats

    def generate(
        self, model: Callable[..., Any], inputs: torch.Tensor, targets: torch.Tensor
    ) -> list[list[int]]:
        """Greedy answers to the prompts of ``inputs`` (their answers blanked), at most as long
        as the expected answer plus eos, without the eos: one forward per answer token, all
        examples at once (causal attention: what is right of a position never changes it)."""
        return greedy_answers(model, inputs, targets)

    def router_choices(
        self, model: Callable[..., Any], inputs: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor | None:
        """For a MoE model, the expert each example's answer-predicting position (the ``=``)
        was routed to first at each layer, ``(N, layers)``; None for a dense model."""
        if self.config.experts is None:
            return None
        out = model(input_ids=inputs, attention_mask=inputs != PAD, output_router_logits=True)
        start = answer_starts(targets)
        rows = torch.arange(len(inputs), device=inputs.device)
        per_layer = [
            logits.view(len(inputs), inputs.shape[1], -1)[rows, start].argmax(-1)
            for logits in out.router_logits
        ]
        return torch.stack(per_layer, dim=1)


def answer_starts(targets: torch.Tensor) -> torch.Tensor:
    """Per example, the position whose prediction is the answer's first token."""
    return (targets != IGNORE).int().argmax(1)


def greedy_answers(
    model: Callable[..., Any], inputs: torch.Tensor, targets: torch.Tensor
) -> list[list[int]]:
    """See ``LMTask.generate``."""
    mask = targets != IGNORE
    start, lengths = answer_starts(targets), mask.sum(1)
    steps = int(lengths.max()) if len(lengths) else 0
    positions = torch.arange(inputs.shape[1], device=inputs.device)
    buffer = inputs.masked_fill(positions[None, :] > start[:, None], PAD)
    rows = torch.arange(len(inputs), device=inputs.device)
    generated = torch.full((len(inputs), steps), EOS, dtype=torch.long, device=inputs.device)
    for k in range(steps):
        logits = model(input_ids=buffer, attention_mask=buffer != PAD).logits
        at = (start + k).clamp(max=inputs.shape[1] - 1)
        token = logits[rows, at].argmax(-1)
        generated[:, k] = token
        write = (start + k + 1 < inputs.shape[1]) & (k < lengths)
        buffer[rows[write], (start + k + 1)[write]] = token[write]
    answers = []
    for row, length in zip(generated.tolist(), lengths.tolist(), strict=True):
        row = row[:length]
        answers.append(row[: row.index(EOS)] if EOS in row else row)
    return answers
