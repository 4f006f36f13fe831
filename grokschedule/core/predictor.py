"""GrokPredictor: from a trial's history so far, P(it groks) and when (ETA, in steps).

A deliberately small model, fitted offline on a curve bank (``grokschedule bench predictor``)
and shipped as ``grokschedule/data/grok_predictor.json``:

* **Features** — a handful of cheap scalars read from the metric stream after memorization, all
  scale-free in steps (time enters only as ``ln(step / memorization step)``, slopes are taken
  against ``ln(step)``), so a run that memorizes at step 50 and one that memorizes at step 500
  are read alike: validation-loss slope and drop from its post-memorization peak, weight-norm
  slope and decay from its peak (the Omnigrok signal), the slope of the logit of the
  correct-class probability, the validation-accuracy gain since memorization (the train/val gap
  closing), the high-frequency energy of the training loss (the spectral signature of Notsawo et
  al. 2023 and Adam slingshot spikes) and the softmax-collapse share (arXiv 2501.04697). Slopes
  are Theil–Sen over the recent half of the run (steps ``t/2 … t``), robust to a single spike.
* **P(grok)** — standardized features → L2 logistic regression (Newton's method, below), then a
  Platt recalibration fitted on out-of-fold predictions. A missing optional metric (a trainable
  that reports no ``grok/*`` scalars, or no weight norm) is imputed with the bank mean (0 after
  standardization) and raises a ``missing:<metric>`` flag with its own fitted weight; the fit
  sees such histories because the bank is replayed with those metrics masked.
* **ETA** — a ridge regression of ``ln(grok step / current step)`` on the same standardized
  features, fitted on the grokkers only; ``eta = step × (e^ŷ − 1)``. Why not Omnigrok's
  ``ln(|w| / w_c) / γ`` directly: the critical norm ``w_c`` is a property of the task and the
  architecture that the scalar stream does not reveal, and while the norm is still rising after
  memorization (``γ ≤ 0``) the formula has no answer at all. The regression uses the same two
  quantities (decay from peak, decay rate) as features and leans on the other signals when they
  say nothing.

What "P(grok)" means: the probability that the run reaches ``threshold`` (0.95 val accuracy)
within the horizon the bank was recorded over (see ``trained_on`` in the JSON) — for the shipped
file 6,000 steps, i.e. 30–120× memorization time. It is a ranking signal first; the
reliability table in BENCHMARKS.md says how far to trust its level.

Memory: ``GrokHistory`` keeps a decimated history (every ``stride``-th report, ``stride``
doubling when ``capacity`` is reached) plus a few running values, so a trial's state is bounded
however long it reports; ``predict(history)`` replays a full history through the same object,
so offline and online predictions agree exactly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from grokschedule.core.contract import VAL_CONFIDENCE, VAL_CORRECT_PROB, ZERO_LOSS_SHARE
from grokschedule.core.signals import theil_sen_slope

FORMAT = "grokschedule.grok_predictor/1"
STEP = "step"
# The metrics a history may carry (besides "step"); every other key is ignored.
INPUTS = (
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "weight_norm",
    VAL_CORRECT_PROB,
    VAL_CONFIDENCE,
    ZERO_LOSS_SHARE,
)
_COL = {name: k for k, name in enumerate(INPUTS)}

# name: (metric it is read from, what it means in plain words)
FEATURES: dict[str, tuple[str, str]] = {
    "elapsed": ("train_acc", "ln(step / memorization step)"),
    "val_loss_slope": ("val_loss", "slope of ln val_loss vs ln step, recent half"),
    "val_loss_drop": ("val_loss", "ln(val_loss / its peak since memorization)"),
    "norm_slope": ("weight_norm", "slope of ln |w| vs ln step, recent half"),
    "norm_drop": ("weight_norm", "ln(|w| / its peak since memorization)"),
    "prob_slope": (VAL_CORRECT_PROB, "slope of logit P(correct class) vs ln step, recent half"),
    "val_acc_gain": ("val_acc", "val_acc gained since memorization (train/val gap closing)"),
    "train_osc": ("train_loss", "high-frequency energy of ln train_loss, recent half"),
    "zero_loss_share": (ZERO_LOSS_SHARE, "share of train samples at exactly zero loss"),
}
# Metrics whose absence is imputed and flagged (the train metrics and step are required).
FLAGGED = ("val_loss", "val_acc", "weight_norm", VAL_CORRECT_PROB, ZERO_LOSS_SHARE)
FLAGS = tuple(f"missing:{name}" for name in FLAGGED)


@dataclass(frozen=True)
class Prediction:
    """``p_grok``: P(reaching the threshold within the horizon); ``eta_steps``: expected steps
    from now until it does (``None`` before memorization or when P(grok) is below 0.5, where a
    time to an unlikely event means little); ``evidence``: the feature values by name;
    ``contributions``: each feature's (and missing-flag's) additive share of the logit."""

    p_grok: float
    eta_steps: float | None
    evidence: dict[str, float] = field(default_factory=dict)
    contributions: dict[str, float] = field(default_factory=dict)
    memorized_step: float | None = None
    step: float | None = None

    def describe(self, top: int = 3) -> str:
        """One line for a decision's reason: the level, the ETA and the strongest signals."""
        eta = "" if self.eta_steps is None else f", ETA {self.eta_steps:,.0f} steps"
        text = f"P(grok) {self.p_grok:.2f}{eta}"
        ranked = sorted(self.contributions.items(), key=lambda kv: -abs(kv[1]))[:top]
        parts = [
            f"{name} {self.evidence[name]:+.2g} ({share:+.1f})"
            if name in self.evidence
            else f"{name} ({share:+.1f})"
            for name, share in ranked
            if abs(share) >= 0.05
        ]
        return text + (" [" + ", ".join(parts) + "]" if parts else "")


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))


def _slope(x: NDArray[np.float64], y: NDArray[np.float64]) -> float:
    """Theil–Sen slope of the finite points (``x`` increases strictly); 0 for fewer than two."""
    ok = np.isfinite(y)
    return theil_sen_slope(x[ok], y[ok]) if not ok.all() else theil_sen_slope(x, y)


class GrokHistory:
    """One trial's stream, kept with bounded memory for the predictor's features.

    Rows are ``(step, *INPUTS)`` with NaN for a metric not reported. Every report updates the
    running values (memorization step, peaks since memorization, metrics seen); only rows whose
    index is a multiple of ``stride`` are kept, and ``stride`` doubles when ``capacity`` rows
    are held, so the kept rows always span the whole run evenly.
    """

    def __init__(
        self,
        capacity: int = 32,
        memorized_acc: float = 0.99,
        memorized_loss: float = 0.01,
    ) -> None:
        if capacity < 4:
            raise ValueError(f"capacity must be >= 4, got {capacity}")
        self.capacity = capacity
        self.memorized_acc = memorized_acc
        self.memorized_loss = memorized_loss
        self.stride = 1
        self.count = 0
        self.rows: list[tuple[float, ...]] = []
        self.latest: tuple[float, ...] | None = None
        self.memorized_step: float | None = None
        self.at_memorization: tuple[float, ...] | None = None
        self.peak_val_loss = -math.inf
        self.peak_norm = -math.inf
        self.seen = [False] * len(INPUTS)

    @property
    def step(self) -> float:
        return math.nan if self.latest is None else self.latest[0]

    def append(self, step: float, values: Mapping[str, float | None]) -> None:
        """Fold one report in; ``values`` maps metric names to numbers (``None``/NaN: absent).
        Steps must increase strictly."""
        step = float(step)
        if not math.isfinite(step):
            raise ValueError(f"step must be finite, got {step}")
        if self.latest is not None and step <= self.latest[0]:
            raise ValueError(
                f"steps must increase strictly: {step:g} came after {self.latest[0]:g}"
            )
        row = [step]
        for k, name in enumerate(INPUTS):
            value = values.get(name)
            number = math.nan if value is None else float(value)
            if math.isfinite(number):
                self.seen[k] = True
            row.append(number)
        kept = tuple(row)
        if self.memorized_step is None and self._memorized(kept):
            self.memorized_step = step
            self.at_memorization = kept
        if self.memorized_step is not None:
            val_loss, norm = kept[1 + _COL["val_loss"]], kept[1 + _COL["weight_norm"]]
            if math.isfinite(val_loss):
                self.peak_val_loss = max(self.peak_val_loss, val_loss)
            if math.isfinite(norm):
                self.peak_norm = max(self.peak_norm, norm)
        if self.count % self.stride == 0:
            self.rows.append(kept)
            if len(self.rows) > self.capacity:
                self.stride *= 2
                self.rows = [r for i, r in enumerate(self.rows) if i % 2 == 0]
        self.latest = kept
        self.count += 1

    def _memorized(self, row: tuple[float, ...]) -> bool:
        acc, loss = row[1 + _COL["train_acc"]], row[1 + _COL["train_loss"]]
        if math.isfinite(acc):
            return acc >= self.memorized_acc
        return math.isfinite(loss) and loss <= self.memorized_loss

    def window(self) -> NDArray[np.float64]:
        """Kept rows (plus the latest) from ``max(memorization, step / 2)`` on, as an array."""
        assert self.latest is not None and self.memorized_step is not None
        start = max(self.memorized_step, self.latest[0] / 2)
        rows = [r for r in self.rows if r[0] >= start and r[0] < self.latest[0]]
        rows.append(self.latest)
        return np.array(rows, dtype=np.float64)

    def features(self) -> tuple[dict[str, float], tuple[str, ...]]:
        """The feature values by name (NaN where the metric is absent) and the missing flags
        raised; requires a memorized run."""
        assert self.latest is not None and self.memorized_step is not None
        latest, memo = self.latest, self.at_memorization
        assert memo is not None
        win = self.window()
        log_t = np.log(np.maximum(win[:, 0], 1e-12))

        def col(name: str) -> NDArray[np.float64]:
            return np.asarray(win[:, 1 + _COL[name]], dtype=np.float64)

        def last(name: str) -> float:
            return latest[1 + _COL[name]]

        with np.errstate(divide="ignore", invalid="ignore"):
            val_loss = np.log(np.maximum(col("val_loss"), 1e-12))
            norm = np.log(np.maximum(col("weight_norm"), 1e-12))
            prob = np.clip(col(VAL_CORRECT_PROB), 1e-6, 1 - 1e-6)
            prob_logit = np.log(prob / (1 - prob))
            train = np.log(np.maximum(col("train_loss"), 1e-7))
        train = train[np.isfinite(train)]
        osc = float((train[1:] - train[:-1]).std()) if len(train) >= 3 else 0.0
        values = {
            "elapsed": math.log(max(latest[0], 1e-12) / max(self.memorized_step, 1e-12)),
            "val_loss_slope": _slope(log_t, val_loss),
            "val_loss_drop": math.log(max(last("val_loss"), 1e-12) / self.peak_val_loss)
            if math.isfinite(last("val_loss")) and self.peak_val_loss > 0
            else math.nan,
            "norm_slope": _slope(log_t, norm),
            "norm_drop": math.log(max(last("weight_norm"), 1e-12) / self.peak_norm)
            if math.isfinite(last("weight_norm")) and self.peak_norm > 0
            else math.nan,
            "prob_slope": _slope(log_t, prob_logit),
            "val_acc_gain": last("val_acc") - memo[1 + _COL["val_acc"]],
            "train_osc": osc,
            "zero_loss_share": last(ZERO_LOSS_SHARE),
        }
        missing = tuple(f"missing:{name}" for name in FLAGGED if not math.isfinite(last(name)))
        for name, (source, _) in FEATURES.items():
            if f"missing:{source}" in missing or not math.isfinite(values[name]):
                values[name] = math.nan
        return values, missing


def history_from_mapping(
    history: Mapping[str, Sequence[float | None]],
    capacity: int = 32,
    memorized_acc: float = 0.99,
    memorized_loss: float = 0.01,
) -> GrokHistory:
    """Check a ``{"step": [...], metric: [...]}`` mapping and replay it into a GrokHistory."""
    if not isinstance(history, Mapping) or not history:
        raise ValueError("history is empty: pass a mapping of 'step' and metric sequences")
    if STEP not in history:
        raise ValueError(f"history has no 'step' sequence (keys: {sorted(history)})")
    lengths = {name: len(values) for name, values in history.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"history sequences must have equal lengths, got {lengths}")
    if lengths[STEP] == 0:
        raise ValueError("history is empty: no step reported yet")
    steps = np.asarray(history[STEP], dtype=np.float64)
    if not np.all(np.isfinite(steps)) or np.any(np.diff(steps) <= 0):
        raise ValueError("history 'step' must be finite and strictly increasing")
    if "train_acc" not in history and "train_loss" not in history:
        raise ValueError("history needs 'train_acc' or 'train_loss' to find memorization")
    state = GrokHistory(capacity, memorized_acc, memorized_loss)
    columns = {name: history[name] for name in INPUTS if name in history}
    for i, step in enumerate(steps.tolist()):
        state.append(step, {name: values[i] for name, values in columns.items()})
    return state


class GrokPredictor:
    """P(grok) and ETA from a trial's history; see the module docstring for the model."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        if params.get("format") != FORMAT:
            raise ValueError(f"not a grok predictor file (format {params.get('format')!r})")
        self.params = dict(params)
        self.features: tuple[str, ...] = tuple(params["features"])
        unknown = set(self.features) - set(FEATURES)
        if unknown:
            raise ValueError(f"unknown features in predictor file: {sorted(unknown)}")
        self.flags: tuple[str, ...] = tuple(params["flags"])
        self.mean = np.asarray(params["mean"], dtype=np.float64)
        self.scale = np.asarray(params["scale"], dtype=np.float64)
        classifier, eta = params["classifier"], params["eta"]
        self.intercept = float(classifier["intercept"])
        self.weights = np.asarray(classifier["weights"], dtype=np.float64)
        self.flag_weights = np.asarray(classifier["flag_weights"], dtype=np.float64)
        self.platt = tuple(float(v) for v in classifier.get("platt", (1.0, 0.0)))
        self.eta_intercept = float(eta["intercept"])
        self.eta_weights = np.asarray(eta["weights"], dtype=np.float64)
        self.eta_flag_weights = np.asarray(eta["flag_weights"], dtype=np.float64)
        self.threshold = float(params.get("threshold", 0.95))
        self.prior = float(params.get("prior", 0.5))
        self.capacity = int(params.get("capacity", 32))
        self.memorized_acc = float(params.get("memorized_acc", 0.99))
        self.memorized_loss = float(params.get("memorized_loss", 0.01))
        # The P(grok) under which GrokPolicy stops a plateau by default (see predictor_fit).
        self.recommended_stop_below = float(params.get("policy", {}).get("stop_below", 0.05))
        n, m = len(self.features), len(self.flags)
        shapes = (self.mean, self.scale, self.weights, self.eta_weights)
        if any(a.shape != (n,) for a in shapes) or any(
            a.shape != (m,) for a in (self.flag_weights, self.eta_flag_weights)
        ):
            raise ValueError("predictor file: coefficient lengths do not match features/flags")

    # -- loading ------------------------------------------------------------------------------
    @classmethod
    def from_default(cls) -> GrokPredictor:
        """The coefficients shipped in ``grokschedule/data/grok_predictor.json``."""
        text = (
            resources.files("grokschedule").joinpath("data/grok_predictor.json").read_text("utf-8")
        )
        return cls.from_json(text)

    @classmethod
    def from_json(cls, source: str | Path) -> GrokPredictor:
        """From JSON text or a path to a JSON file."""
        text = source.read_text("utf-8") if isinstance(source, Path) else source
        if isinstance(source, str) and not source.lstrip().startswith("{"):
            text = Path(source).read_text("utf-8")
        return cls(json.loads(text))

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.params, indent=1) + "\n"
        if path is not None:
            Path(path).write_text(text, "utf-8")
        return text

    # -- predicting ---------------------------------------------------------------------------
    def new_history(self) -> GrokHistory:
        return GrokHistory(self.capacity, self.memorized_acc, self.memorized_loss)

    def predict(self, history: Mapping[str, Sequence[float | None]] | GrokHistory) -> Prediction:
        """P(grok) and ETA from ``history``: a mapping of ``"step"`` and metric names to
        equal-length sequences of what the trial reported so far (``None``/NaN where a value
        is absent), or a GrokHistory kept online. ``ValueError`` for an empty history, no
        ``"step"``, unequal lengths or steps that do not increase."""
        if not isinstance(history, GrokHistory):
            history = history_from_mapping(
                history, self.capacity, self.memorized_acc, self.memorized_loss
            )
        if history.latest is None:
            raise ValueError("history is empty: no step reported yet")
        step = history.latest[0]
        val_acc = history.latest[1 + _COL["val_acc"]]
        if math.isfinite(val_acc) and val_acc >= self.threshold:
            return Prediction(1.0, 0.0, {"val_acc": val_acc}, {}, history.memorized_step, step)
        if history.memorized_step is None:
            return Prediction(self.prior, None, {"memorized": 0.0}, {}, None, step)
        values, missing = history.features()
        z = self._standardize(values)
        flags = np.array([1.0 if f in missing else 0.0 for f in self.flags])
        contrib = self.weights * z
        logit = self.intercept + float(contrib.sum()) + float(self.flag_weights @ flags)
        a, b = self.platt
        p = _sigmoid(a * logit + b)
        log_ratio = self.eta_intercept + float(self.eta_weights @ z + self.eta_flag_weights @ flags)
        eta = step * math.expm1(min(max(log_ratio, 0.0), 8.0)) if p >= 0.5 else None
        evidence = {n: v for n, v in values.items() if math.isfinite(v)}
        contributions = dict(zip(self.features, contrib.tolist(), strict=True))
        for flag, weight in zip(self.flags, self.flag_weights.tolist(), strict=True):
            if flag in missing:
                contributions[flag] = weight
        return Prediction(round(p, 4), eta, evidence, contributions, history.memorized_step, step)

    def _standardize(self, values: Mapping[str, float]) -> NDArray[np.float64]:
        raw = np.array([values.get(n, math.nan) for n in self.features], dtype=np.float64)
        z = (raw - self.mean) / self.scale
        return np.where(np.isfinite(z), z, 0.0)
