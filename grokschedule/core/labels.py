"""Short labels for trials, for people: what tells one trial of a sweep from the others.

``short_labels`` names each trial by the parameters that vary across the sweep, with short names
(``weight_decay`` → ``wd``) and values rounded to three significant digits (``0.8999999999999999``
→ ``0.9``): ``wd=0.3 frac=0.5 seed=1``. Parameters every trial shares tell nothing and are left
out, so the label stays short however large the config is. Plots, reports and consoles all label
trials the same way through this module.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

# Short names for the parameters grokschedule's trainables and sweeps know.
SHORT_NAMES: Mapping[str, str] = {
    "weight_decay": "wd",
    "train_fraction": "frac",
    "learning_rate": "lr",
    "batch_size": "bs",
    "micro_batch_size": "mbs",
    "embed_dim": "emb",
    "hidden_dim": "hid",
    "num_layers": "layers",
    "n_layers": "layers",
    "num_heads": "heads",
    "dropout": "drop",
    "momentum": "mom",
    "optimizer": "opt",
    "init_scale": "init",
    "max_steps": "steps",
    "warmup_steps": "warmup",
    "num_workers": "workers",
    "precision": "prec",
    "lora_rank": "rank",
    "lm_lora_rank": "rank",
    "lm_train_fraction": "frac",
}
MAX_PLAIN = 8  # a name this short is kept as it is


def format_value(value: object) -> str:
    """A value as a person reads it: floats to three significant digits without float noise
    (``0.1 + 0.2`` → ``0.3``, ``1234.5`` → ``1230``, ``3e-05`` → ``3e-5``), integers exact,
    sequences item by item. A string that spells a float (MLflow params are strings) is
    formatted as that float."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return _float(float(value))
    if isinstance(value, str):
        return _numeric_text(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(format_value(item) for item in value) + "]"
    return str(value)


def short_name(key: str) -> str:
    """A parameter's short name: the last part of a nested key (``model/lr`` → ``lr``), then
    ``SHORT_NAMES``, then the name itself if it is short, else its words' initials
    (``label_smoothing`` → ``ls``) or, for one long word, its first six letters."""
    name = key.replace(".", "/").rsplit("/", 1)[-1]
    if name in SHORT_NAMES:
        return SHORT_NAMES[name]
    if len(name) <= MAX_PLAIN:
        return name
    words = [word for word in name.split("_") if word]
    if len(words) > 1:
        return "".join(word[0] for word in words)
    return name[:6]


def describe(params: Mapping[str, Any]) -> str:
    """``params`` as ``name=value`` words with short names (``wd=1 frac=0.6``), in their order;
    names that would shorten to the same one keep their full key."""
    names = _unique_names(params)
    return " ".join(f"{names[key]}={format_value(value)}" for key, value in params.items())


def short_labels(configs: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Per trial id, a label of the parameters whose (formatted) values differ across
    ``configs``: ``{"t0": "wd=0.3 seed=1", ...}``. Nested mappings are read as ``a/b`` keys and
    keys starting with ``_`` (private entries) are skipped. Labels are unique: trials that
    nothing tells apart get their id added, and a trial with no varying parameter is its id."""
    flat = {trial: _flatten(config) for trial, config in configs.items()}
    keys = list(dict.fromkeys(key for config in flat.values() for key in config))
    varying = [
        key
        for key in keys
        if len({format_value(c[key]) if key in c else None for c in flat.values()}) > 1
    ]
    labels = {
        trial: describe({key: config[key] for key in varying if key in config})
        for trial, config in flat.items()
    }
    counts: dict[str, int] = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    unique = {}
    for trial, label in labels.items():
        if not label:
            unique[trial] = trial
        elif counts[label] > 1:
            unique[trial] = f"{label} ({trial})"
        else:
            unique[trial] = label
    return unique


def _float(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    exponent = math.floor(math.log10(abs(x)))
    if -4 <= exponent < 6:
        decimals = max(0, 2 - exponent)
        text = f"{round(x, 2 - exponent):.{decimals}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    mantissa, _, power = f"{x:.2e}".partition("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(power)}"


def _numeric_text(text: str) -> str:
    """A string param: a float's spelling rounded like a float, anything else as it is."""
    stripped = text.strip()
    if not any(char.isdigit() for char in stripped):
        return text  # "nan", "inf", words
    try:
        int(stripped)
        return stripped
    except ValueError:
        pass
    try:
        return _float(float(stripped))
    except ValueError:
        return text


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = str(key)
        if name.startswith("_"):
            continue
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{name}/"))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def _unique_names(keys: Iterable[str]) -> dict[str, str]:
    """Short names, except where two keys would share one: those keep their full key."""
    short = {key: short_name(key) for key in keys}
    taken: dict[str, int] = {}
    for name in short.values():
        taken[name] = taken.get(name, 0) + 1
    return {key: name if taken[name] == 1 else key for key, name in short.items()}
