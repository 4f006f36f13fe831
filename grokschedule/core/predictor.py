"""GrokPredictor: from a trial's history so far, P(it groks), how sure that is, and when (ETA).

A deliberately small model, fitted offline on curve banks (``grokschedule bench predictor``) and
shipped as ``grokschedule/data/grok_predictor.json``:

* **Features** — cheap scalars read from the metric stream after memorization, all scale-free:
  in steps (time enters only as ``ln(step / memorization step)``, slopes are taken against
  ``ln(step)``), in loss level (losses are read relative to the trial's own values — its value at
  memorization or its peak since — never against a chance level the core does not know) and in
  width (the weight norm only through ratios and log-slopes). Slopes are Theil–Sen over the
  recent half of the run (steps ``t/2 … t``), robust to a single spike. ``FEATURES`` lists them
  with what each means.
* **Signs that make physical sense, by construction** — each feature's ``sign`` in ``FEATURES``
  bounds its coefficients: validation loss falling, the correct-class probability rising,
  validation accuracy gained (the train/val gap closing) and the weight norm decaying never
  count against grokking, whatever a bank suggests; ``FREE`` features are left to the data.
* **P(grok)** — each standardized feature enters through a monotone piecewise-linear shape (ramps
  between knots at training quantiles, flat outside the training range, zero at the bank mean),
  so "how much" a signal says may bend but never flip; a sign-constrained logistic regression
  (``core.fitting``) then a Platt recalibration fitted on held-out-task predictions. A missing
  optional metric leaves its features at the bank mean (no contribution) and raises a
  ``missing:<metric>`` flag with its own fitted weight.
* **How sure** — ``p_low``/``p_high`` bound P(grok) from the spread of coefficient vectors refitted
  on bootstrap resamples of whole training groups (tasks, not rows), plus a shift allowance
  for a sweep unlike any in the bank; a feature far outside the training range is not
  extrapolated (flat), is named in ``out_of_range``, and the interval then also spans the
  prediction that ignores it. A policy should stop a run only when ``p_high`` is under its bar.
* **ETA** — a median (least-absolute-deviation) ridge regression of ``ln(grok step / current
  step)`` on the same shapes, fitted on the grokkers only; ``eta = step × (e^ŷ − 1)``. Why not
  Omnigrok's ``ln(|w| / w_c) / γ``: the critical norm ``w_c`` is a property of the task and the
  architecture that the scalar stream does not reveal, and while the norm still rises after
  memorization the formula has no answer.
* **Learning from the sweep** — ``SweepAdaptivePredictor`` refits the coefficients as the
  sweep's own trials grok or run out, as a MAP logistic under a Gaussian prior centred on the
  shipped coefficients (with the bootstrap covariance), so a handful of outcomes moves it a
  little and many move it more.

What "P(grok)" means: the probability that the run reaches ``threshold`` (0.95 val accuracy)
within the horizon the banks were recorded over (``trained_on`` in the JSON). It is a ranking
signal first; ``evaluation`` in the JSON says how far to trust its level on held-out groups.

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
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from grokschedule.core.contract import VAL_CONFIDENCE, VAL_CORRECT_PROB, ZERO_LOSS_SHARE
from grokschedule.core.fitting import fit_logistic
from grokschedule.core.signals import theil_sen_slope

FORMAT = "grokschedule.grok_predictor/2"
# Formats this module once wrote and no longer reads (their features were linear and unbounded).
RETIRED_FORMATS = ("grokschedule.grok_predictor/1",)
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

# A feature's sign: FOR_GROK — a larger value never lowers P(grok); AGAINST_GROK — never raises
# it; FREE — the data decide (and may bend the shape either way).
FOR_GROK, AGAINST_GROK, FREE = 1, -1, 0


class Feature(NamedTuple):
    """One predictor input: the metrics it is read from, its sign, what it means."""

    sources: tuple[str, ...]
    sign: int
    meaning: str


FEATURES: dict[str, Feature] = {
    "elapsed": Feature((), FREE, "ln(step / memorization step)"),
    "val_loss_slope": Feature(
        ("val_loss",), AGAINST_GROK, "slope of ln val_loss vs ln step, recent half"
    ),
    "val_loss_drop": Feature(
        ("val_loss",), AGAINST_GROK, "ln(val_loss / its peak since memorization)"
    ),
    "val_loss_vs_memorized": Feature(
        ("val_loss",), AGAINST_GROK, "ln(val_loss / val_loss at memorization)"
    ),
    "norm_slope": Feature(
        ("weight_norm",), AGAINST_GROK, "slope of ln |w| vs ln step, recent half"
    ),
    "norm_drop": Feature(("weight_norm",), AGAINST_GROK, "ln(|w| / its peak since memorization)"),
    "norm_vs_memorized": Feature(("weight_norm",), AGAINST_GROK, "ln(|w| / |w| at memorization)"),
    "prob_slope": Feature(
        (VAL_CORRECT_PROB,), FOR_GROK, "slope of logit P(correct class) vs ln step, recent half"
    ),
    "prob_gain": Feature(
        (VAL_CORRECT_PROB,), FOR_GROK, "logit P(correct class) gained since memorization"
    ),
    "val_acc_gain": Feature(
        ("val_acc",), FOR_GROK, "val_acc gained since memorization (train/val gap closing)"
    ),
    "val_acc_slope": Feature(
        ("val_acc",), FOR_GROK, "slope of logit val_acc vs ln step, recent half"
    ),
    "confidence_gap_change": Feature(
        (VAL_CONFIDENCE, VAL_CORRECT_PROB),
        FREE,  # no physical sign, and fitted as FREE it ranks held-out groups better
        "change since memorization of logit max-softmax minus logit P(correct class)",
    ),
    "train_loss_slope": Feature(
        ("train_loss",), FREE, "slope of ln train_loss vs ln step, recent half"
    ),
    # Adam slingshot spikes precede grokking on larger runs and came with memorizers on small
    # ones; held out, FREE ranks no better than FOR_GROK, so oscillation may only count for.
    "train_osc": Feature(
        ("train_loss",), FOR_GROK, "high-frequency energy of ln train_loss, recent half"
    ),
    "zero_loss_share": Feature(
        (ZERO_LOSS_SHARE,), AGAINST_GROK, "share of train samples at exactly zero loss"
    ),
}
# Metrics whose absence is imputed and flagged (the train metrics and step are required).
FLAGGED = ("val_loss", "val_acc", "weight_norm", VAL_CORRECT_PROB, ZERO_LOSS_SHARE)
FLAGS = tuple(f"missing:{name}" for name in FLAGGED)


@dataclass(frozen=True)
class Prediction:
    """``p_grok``: P(reaching the threshold within the horizon), with ``p_low``/``p_high`` the
    interval around it (see the module docstring); ``eta_steps``: expected steps from now until
    it does (``None`` before memorization or when P(grok) is below 0.5, where a time to an
    unlikely event means little); ``evidence``: the feature values by name; ``contributions``:
    each feature's (and missing-flag's) additive share of the logit; ``missing``: the flags
    raised; ``out_of_range``: features far outside the range the model was fitted on."""

    p_grok: float
    eta_steps: float | None
    evidence: dict[str, float] = field(default_factory=dict)
    contributions: dict[str, float] = field(default_factory=dict)
    memorized_step: float | None = None
    step: float | None = None
    p_low: float = math.nan  # NaN: no interval given, read as p_grok
    p_high: float = math.nan
    missing: tuple[str, ...] = ()
    out_of_range: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if math.isnan(self.p_low):
            object.__setattr__(self, "p_low", self.p_grok)
        if math.isnan(self.p_high):
            object.__setattr__(self, "p_high", self.p_grok)

    def confidently_below(self, bar: float) -> bool:
        """Whether even the top of the interval is under ``bar``: the test a stop should pass."""
        return self.p_high < bar

    def describe(self, top: int = 3) -> str:
        """One line for a decision's reason: the level and interval, the ETA, the strongest
        signals and any feature out of the fitted range."""
        eta = "" if self.eta_steps is None else f", ETA {self.eta_steps:,.0f} steps"
        spread = f" ({self.p_low:.2f}–{self.p_high:.2f})" if self.p_high > self.p_low else ""
        text = f"P(grok) {self.p_grok:.2f}{spread}{eta}"
        ranked = sorted(self.contributions.items(), key=lambda kv: -abs(kv[1]))[:top]
        parts = [
            f"{name} {self.evidence[name]:+.2g} ({share:+.1f})"
            if name in self.evidence
            else f"{name} ({share:+.1f})"
            for name, share in ranked
            if abs(share) >= 0.05
        ]
        text += " [" + ", ".join(parts) + "]" if parts else ""
        if self.out_of_range:
            text += " out of range: " + ", ".join(self.out_of_range)
        return text


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))


def _slope(x: NDArray[np.float64], y: NDArray[np.float64]) -> float:
    """Theil–Sen slope of the finite points (``x`` increases strictly); 0 for fewer than two."""
    ok = np.isfinite(y)
    return theil_sen_slope(x[ok], y[ok]) if not ok.all() else theil_sen_slope(x, y)


def _logit(p: NDArray[np.float64] | float, eps: float) -> Any:
    q = np.clip(p, eps, 1 - eps)
    return np.log(q / (1 - q))


def _log_ratio(now: float, then: float) -> float:
    """``ln(now / then)`` for positive finite values, else NaN."""
    if math.isfinite(now) and math.isfinite(then) and now > 0 and then > 0:
        return math.log(now) - math.log(then)  # the quotient may underflow or overflow
    return math.nan


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
        """The feature values by name (NaN where a source metric is absent) and the missing
        flags raised; requires a memorized run."""
        assert self.latest is not None and self.memorized_step is not None
        latest, memo = self.latest, self.at_memorization
        assert memo is not None
        win = self.window()
        log_t = np.log(np.maximum(win[:, 0], 1e-12))

        def col(name: str) -> NDArray[np.float64]:
            return np.asarray(win[:, 1 + _COL[name]], dtype=np.float64)

        def last(name: str) -> float:
            return latest[1 + _COL[name]]

        def first(name: str) -> float:
            return memo[1 + _COL[name]]

        with np.errstate(divide="ignore", invalid="ignore"):
            val_loss = np.log(np.maximum(col("val_loss"), 1e-12))
            norm = np.log(np.maximum(col("weight_norm"), 1e-12))
            prob_logit = _logit(col(VAL_CORRECT_PROB), 1e-6)
            acc_logit = _logit(col("val_acc"), 1e-3)
            train = np.log(np.maximum(col("train_loss"), 1e-7))
        finite_train = train[np.isfinite(train)]
        osc = float(np.diff(finite_train).std()) if len(finite_train) >= 3 else 0.0

        def overconfidence(row: tuple[float, ...]) -> float:
            confidence, prob = row[1 + _COL[VAL_CONFIDENCE]], row[1 + _COL[VAL_CORRECT_PROB]]
            return float(_logit(confidence, 1e-6) - _logit(prob, 1e-6))

        values = {
            "elapsed": math.log(max(latest[0], 1e-12) / max(self.memorized_step, 1e-12)),
            "val_loss_slope": _slope(log_t, val_loss),
            "val_loss_drop": _log_ratio(last("val_loss"), self.peak_val_loss),
            "val_loss_vs_memorized": _log_ratio(last("val_loss"), first("val_loss")),
            "norm_slope": _slope(log_t, norm),
            "norm_drop": _log_ratio(last("weight_norm"), self.peak_norm),
            "norm_vs_memorized": _log_ratio(last("weight_norm"), first("weight_norm")),
            "prob_slope": _slope(log_t, prob_logit),
            "prob_gain": float(
                _logit(last(VAL_CORRECT_PROB), 1e-6) - _logit(first(VAL_CORRECT_PROB), 1e-6)
            ),
            "val_acc_gain": last("val_acc") - first("val_acc"),
            "val_acc_slope": _slope(log_t, acc_logit),
            "confidence_gap_change": overconfidence(latest) - overconfidence(memo),
            "train_loss_slope": _slope(log_t, train),
            "train_osc": osc,
            "zero_loss_share": last(ZERO_LOSS_SHARE),
        }
        missing = tuple(f"missing:{name}" for name in FLAGGED if not math.isfinite(last(name)))
        absent = {name for name in INPUTS if not math.isfinite(last(name))}
        for name, feature in FEATURES.items():
            if absent.intersection(feature.sources) or not math.isfinite(values[name]):
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


def ramp_basis(z: NDArray[np.float64], knots: NDArray[np.float64]) -> NDArray[np.float64]:
    """The piecewise-linear shapes' inputs: for standardized features ``z`` (..., F) and each
    feature's sorted ``knots`` (F, K), the ramps ``clip(z, kᵢ, kᵢ₊₁) − clip(0, kᵢ, kᵢ₊₁)``
    (..., F, K − 1). Ramps are flat outside ``[k₀, k_last]`` (no extrapolation) and all zero at
    ``z = 0`` (the bank mean, where a missing value is imputed), and with coefficients of one
    sign their sum is monotone in ``z``."""
    left, right = knots[:, :-1], knots[:, 1:]
    return np.asarray(
        np.clip(z[..., None], left, right) - np.clip(0.0, left, right), dtype=np.float64
    )


def _matrix(values: Any, shape: tuple[int, ...], name: str) -> NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if array.shape != shape:
        raise ValueError(
            f"predictor file: {name} has shape {array.shape}, expected {shape} "
            "(coefficient lengths do not match features/flags/knots)"
        )
    return array


class GrokPredictor:
    """P(grok) with an interval, and ETA, from a trial's history; see the module docstring.

    Internally the classifier is one coefficient vector over the design ``[1, ramps (F × R),
    flags]`` with the Platt recalibration folded in, and its covariance; SweepAdaptivePredictor
    replaces both as outcomes arrive."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        found = params.get("format")
        if found in RETIRED_FORMATS:
            raise ValueError(
                f"predictor file format {found!r} is no longer read (its linear features "
                f"extrapolate and carry no interval); refit it as {FORMAT!r} with "
                "`grokschedule bench predictor --bank BANK.npz --out FILE.json`"
            )
        if found != FORMAT:
            raise ValueError(f"not a grok predictor file (format {found!r}, expected {FORMAT!r})")
        self.params = dict(params)
        self.features: tuple[str, ...] = tuple(params["features"])
        unknown = set(self.features) - set(FEATURES)
        if unknown:
            raise ValueError(f"unknown features in predictor file: {sorted(unknown)}")
        self.flags: tuple[str, ...] = tuple(params["flags"])
        if set(self.flags) - set(FLAGS):
            raise ValueError(
                f"unknown flags in predictor file: {sorted(set(self.flags) - set(FLAGS))}"
            )
        n = len(self.features)
        self.mean = _matrix(params["mean"], (n,), "mean")
        self.scale = _matrix(params["scale"], (n,), "scale")
        self.knots = np.asarray(params["knots"], dtype=np.float64)
        if self.knots.ndim != 2 or self.knots.shape[0] != n or self.knots.shape[1] < 2:
            raise ValueError(
                f"predictor file: knots must be {n} rows of >= 2, got {self.knots.shape}"
            )
        if np.any(np.diff(self.knots, axis=1) < 0):
            raise ValueError("predictor file: each feature's knots must be sorted")
        ramps = self.knots.shape[1] - 1
        classifier, eta = params["classifier"], params["eta"]
        raw = np.r_[
            float(classifier["intercept"]),
            _matrix(classifier["weights"], (n, ramps), "classifier weights").ravel(),
            _matrix(classifier["flag_weights"], (len(self.flags),), "classifier flag_weights"),
        ]
        a, b = (float(v) for v in classifier.get("platt", (1.0, 0.0)))
        if not a > 0:
            raise ValueError(f"predictor file: the Platt slope must be > 0, got {a}")
        self.coef = a * raw
        self.coef[0] += b
        interval = params.get("interval", {})
        self.z = float(interval.get("z", 1.645))
        self.shift_sd = float(interval.get("shift_sd", 0.0))
        self.ood_margin = float(interval.get("ood_margin", 0.25))
        boot = np.asarray(classifier.get("bootstrap", []), dtype=np.float64)
        spread = np.zeros((len(raw), len(raw)))
        if len(boot) >= 2:
            spread = np.atleast_2d(np.cov(_matrix(boot, (len(boot), len(raw)), "bootstrap").T))
        self.cov = a**2 * spread + self.shift_sd**2 * np.diag(np.r_[0.0, np.ones(len(raw) - 1)])
        self.eta_coef = np.r_[
            float(eta["intercept"]),
            _matrix(eta["weights"], (n, ramps), "eta weights").ravel(),
            _matrix(eta["flag_weights"], (len(self.flags),), "eta flag_weights"),
        ]
        self.threshold = float(params.get("threshold", 0.95))
        self.prior = float(params.get("prior", 0.5))
        self.capacity = int(params.get("capacity", 32))
        self.memorized_acc = float(params.get("memorized_acc", 0.99))
        self.memorized_loss = float(params.get("memorized_loss", 0.01))
        # The P(grok) bar GrokPolicy stops under by default (chosen in predictor_fit on held-out
        # groups so that almost no grokker's p_high falls below it).
        self.recommended_stop_below = float(params.get("policy", {}).get("stop_below", 0.05))

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
        """P(grok), its interval and the ETA from ``history``: a mapping of ``"step"`` and
        metric names to equal-length sequences of what the trial reported so far
        (``None``/NaN where a value is absent), or a GrokHistory kept online. ``ValueError``
        for an empty history, no ``"step"``, unequal lengths or steps that do not increase."""
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
        if history.memorized_step is None:  # nothing to read yet: the bank's base rate
            return Prediction(self.prior, None, {"memorized": 0.0}, {}, None, step, 0.0, 1.0)
        values, missing = history.features()
        return self.predict_features(values, missing, step, history.memorized_step)

    def predict_features(
        self,
        values: Mapping[str, float],
        missing: Sequence[str] = (),
        step: float | None = None,
        memorized_step: float | None = None,
    ) -> Prediction:
        """The prediction for feature ``values`` by name (what ``GrokHistory.features`` reads;
        absent or NaN: imputed) with the ``missing`` flags raised; the ETA needs ``step``."""
        design, outside = self.design(values, missing)
        p = _sigmoid(float(self.coef @ design))
        p_low, p_high = self._interval(design, outside)
        log_ratio = float(self.eta_coef @ design)
        eta = None
        if step is not None and p >= 0.5:
            eta = step * math.expm1(min(max(log_ratio, 0.0), 8.0))
        n, ramps = len(self.features), self.knots.shape[1] - 1
        shares = (self.coef[1 : 1 + n * ramps] * design[1 : 1 + n * ramps]).reshape(n, ramps)
        contributions = dict(zip(self.features, shares.sum(axis=1).tolist(), strict=True))
        for flag, share in zip(self.flags, self.coef[1 + n * ramps :].tolist(), strict=True):
            if flag in missing:
                contributions[flag] = share
        return Prediction(
            round(p, 4),
            eta,
            {name: float(v) for name, v in values.items() if math.isfinite(v)},
            contributions,
            memorized_step,
            step,
            round(p_low, 4),
            round(p_high, 4),
            tuple(missing),
            tuple(name for name, far in zip(self.features, outside.tolist(), strict=True) if far),
        )

    def design(
        self, values: Mapping[str, float], missing: Sequence[str] = ()
    ) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
        """The model's input row ``[1, ramps, flags]`` for feature ``values`` by name (absent or
        NaN: imputed at the bank mean) and the ``missing`` flags; and which features lie more
        than ``ood_margin`` standard deviations outside the fitted range."""
        raw = np.array([values.get(n, math.nan) for n in self.features], dtype=np.float64)
        z = (raw - self.mean) / self.scale
        known = np.isfinite(z)
        z = np.where(known, z, 0.0)
        margin = self.ood_margin
        outside = known & ((z < self.knots[:, 0] - margin) | (z > self.knots[:, -1] + margin))
        flags = [1.0 if f in missing else 0.0 for f in self.flags]
        return np.r_[1.0, ramp_basis(z, self.knots).ravel(), flags], outside

    def _interval(
        self, design: NDArray[np.float64], outside: NDArray[np.bool_]
    ) -> tuple[float, float]:
        """``p_low``/``p_high``: the logit ± ``z`` standard deviations under the coefficients'
        covariance; with features out of range, widened to cover the prediction that ignores
        them (their ramps at zero) as well."""
        rows = [design]
        if outside.any():
            ignored = design.copy()
            ramps = len(self.knots[0]) - 1
            for k in np.flatnonzero(outside):
                ignored[1 + k * ramps : 1 + (k + 1) * ramps] = 0.0
            rows.append(ignored)
        lows, highs = [], []
        for row in rows:
            logit = float(self.coef @ row)
            sd = math.sqrt(max(float(row @ self.cov @ row), 0.0))
            lows.append(logit - self.z * sd)
            highs.append(logit + self.z * sd)
        return _sigmoid(min(lows)), _sigmoid(max(highs))

    def bounds(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Each coefficient's bounds from the features' signs the file was fitted under (the
        ``FEATURES`` table's unless it says otherwise); the intercept free, the missing-metric
        flags held at the file's values (within one sweep a metric is reported by every trial
        or by none, so a flag cannot be told apart from the intercept)."""
        ramps = len(self.knots[0]) - 1
        fitted = {n: FEATURES[n].sign for n in self.features} | dict(self.params.get("signs", {}))
        signs = np.repeat([int(fitted[n]) for n in self.features], ramps)
        signs = np.r_[0, signs, np.zeros(len(self.flags))]
        lower = np.where(signs > 0, 0.0, -math.inf)
        upper = np.where(signs < 0, 0.0, math.inf)
        flags = np.asarray(self.params["classifier"]["flag_weights"], dtype=np.float64)
        lower[len(lower) - len(flags) :] = upper[len(upper) - len(flags) :] = flags
        return lower, upper


class SweepAdaptivePredictor(GrokPredictor):
    """A GrokPredictor that learns from the sweep it serves.

    Each ``observe_outcome(prediction, grokked)`` adds one trial's features at the time it was
    judged and whether it then grokked; the classifier is refitted (lazily, at the next
    prediction) as the MAP logistic regression under a Gaussian prior centred on ``prior``'s
    coefficients, with covariance the prior's bootstrap covariance plus ``prior_sd``² per
    coefficient and ``intercept_sd``² on the intercept (the sweep may differ from the banks,
    its base rate most) — so a handful of outcomes moves it a little and many move it more —
    and the features' sign bounds kept. The interval comes from that covariance, then from the
    posterior (Laplace) one: it starts wider than the prior's and narrows as outcomes arrive.

    Record only outcomes that were observed, not caused: a trial that grokked, or one that ran
    its whole budget without grokking. A trial stopped on a low P(grok) has no outcome; counting
    it as a non-grokker would teach the predictor its own mistakes."""

    def __init__(
        self, prior: GrokPredictor, prior_sd: float = 0.3, intercept_sd: float = 0.5
    ) -> None:
        for name, value in (("prior_sd", prior_sd), ("intercept_sd", intercept_sd)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0, got {value}")
        super().__init__(prior.params)
        self.prior_sd, self.intercept_sd = prior_sd, intercept_sd
        self.prior_coef = self.coef.copy()
        # This sweep's coefficients may differ from the banks' on top of the bootstrap spread —
        # its base rate most (a search space decides how many runs grok): the interval starts
        # that much wider and narrows with outcomes.
        shift = np.full(len(self.coef), prior_sd**2)
        shift[0] = intercept_sd**2
        self.cov = self.cov + np.diag(shift)
        self.prior_cov = self.cov.copy()
        self.prior_precision = np.linalg.inv(self.cov)
        self.rows: list[NDArray[np.float64]] = []
        self.labels: list[float] = []
        self._stale = False

    @property
    def outcomes(self) -> int:
        return len(self.labels)

    def observe_outcome(self, at_judge: Prediction, grokked: bool) -> None:
        """Record one trial's outcome with the Prediction made when it was judged (after
        memorization: its ``evidence`` and ``missing`` are the features)."""
        if at_judge.memorized_step is None or not at_judge.contributions:
            raise ValueError(
                "at_judge must be a Prediction made after memorization and before the target "
                "was reached (it carries the features the outcome is learned from)"
            )
        self.rows.append(self.design(at_judge.evidence, at_judge.missing)[0])
        self.labels.append(1.0 if grokked else 0.0)
        self._stale = True

    def predict_features(
        self,
        values: Mapping[str, float],
        missing: Sequence[str] = (),
        step: float | None = None,
        memorized_step: float | None = None,
    ) -> Prediction:
        if self._stale:
            self.refit()
        return super().predict_features(values, missing, step, memorized_step)

    def refit(self) -> None:
        """The MAP coefficients and their Laplace covariance from the outcomes so far."""
        self._stale = False
        if not self.rows:
            self.coef, self.cov = self.prior_coef.copy(), self.prior_cov.copy()
            return
        x = np.array(self.rows)
        y = np.array(self.labels)
        lower, upper = self.bounds()
        self.coef = fit_logistic(
            x[:, 1:],
            y,
            np.ones(len(y)),
            self.prior_precision,
            lower=lower,
            upper=upper,
            center=self.prior_coef,
        )
        p = 1 / (1 + np.exp(-np.clip(x @ self.coef, -30, 30)))
        hessian = (x * (p * (1 - p))[:, None]).T @ x + self.prior_precision
        self.cov = np.linalg.inv(hessian)
