"""SweepAdaptivePredictor: a sweep's own outcomes move a wrong prior a little, then a lot, and
never against a feature's sign; cheap refits; only post-memorization predictions are learned."""

from __future__ import annotations

import math

import numpy as np
import pytest

from grokschedule.core.predictor import (
    FLAGS,
    FORMAT,
    GrokPredictor,
    Prediction,
    SweepAdaptivePredictor,
)

KNOTS = [-3.0, -1.0, 0.0, 1.0, 3.0]
FEATURES = ("val_loss_slope", "prob_slope")  # AGAINST_GROK and FOR_GROK


def _predictor(intercept: float, loss_weight: float, prob_weight: float) -> GrokPredictor:
    """Two features, each a straight line through its ramps (one weight for all four)."""
    weights = [[loss_weight] * 4, [prob_weight] * 4]
    flat = [intercept, *weights[0], *weights[1], *[0.0] * len(FLAGS)]
    rng = np.random.default_rng(0)
    return GrokPredictor(
        {
            "format": FORMAT,
            "features": list(FEATURES),
            "flags": list(FLAGS),
            "mean": [0.0, 0.0],
            "scale": [1.0, 1.0],
            "knots": [KNOTS, KNOTS],
            "classifier": {
                "intercept": intercept,
                "weights": weights,
                "flag_weights": [0.0] * len(FLAGS),
                "bootstrap": (np.array(flat) + 0.05 * rng.normal(size=(16, len(flat)))).tolist(),
            },
            "eta": {
                "intercept": 1.0,
                "weights": [[0.0] * 4, [0.0] * 4],
                "flag_weights": [0.0] * len(FLAGS),
            },
        }
    )


def _judged(values: dict[str, float], model: GrokPredictor) -> Prediction:
    return model.predict_features(values, step=200.0, memorized_step=100.0)


def _sweep(truth: GrokPredictor, n: int, seed: int) -> list[tuple[Prediction, bool]]:
    """``n`` trials judged with features drawn from N(0, 1), grokking as ``truth`` says."""
    rng = np.random.default_rng(seed)
    out = []
    for row in rng.normal(size=(n, 2)).clip(-2.5, 2.5):
        values = dict(zip(FEATURES, row.tolist(), strict=True))
        judged = _judged(values, truth)
        out.append((judged, bool(rng.random() < judged.p_grok)))
    return out


def _log_loss(model: GrokPredictor, sweep: list[tuple[Prediction, bool]]) -> float:
    total = 0.0
    for judged, grokked in sweep:
        p = min(max(model.predict_features(judged.evidence).p_grok, 1e-4), 1 - 1e-4)
        total -= math.log(p if grokked else 1 - p)
    return total / len(sweep)


# The prior says most runs grok and the correct-class probability matters; in this sweep few
# grok and only the validation loss matters.
PRIOR = _predictor(intercept=1.5, loss_weight=-0.3, prob_weight=1.0)
TRUTH = _predictor(intercept=-1.5, loss_weight=-1.2, prob_weight=0.0)


def test_a_few_outcomes_move_a_wrong_prior_a_little_and_many_move_it_most_of_the_way() -> None:
    fresh = _sweep(TRUTH, 400, seed=1)
    adaptive = SweepAdaptivePredictor(PRIOR)
    assert _log_loss(adaptive, fresh) == pytest.approx(_log_loss(PRIOR, fresh))  # no outcomes
    probe = {"val_loss_slope": 0.0, "prob_slope": 0.0}
    levels = {0: adaptive.predict_features(probe).p_grok}
    outcomes = _sweep(TRUTH, 400, seed=2)
    for count, (judged, grokked) in enumerate(outcomes, 1):
        adaptive.observe_outcome(judged, grokked)
        if count in (5, 20, 100, 400):
            levels[count] = adaptive.predict_features(probe).p_grok
    truth_level = TRUTH.predict_features(probe).p_grok  # 0.18, where the prior says 0.82
    assert levels[0] == pytest.approx(PRIOR.predict_features(probe).p_grok)
    gap = levels[0] - truth_level
    assert 0 < levels[0] - levels[5] < 0.25 * gap  # a handful: a little
    assert levels[5] > levels[20] > levels[100] > levels[400]
    assert abs(levels[400] - truth_level) < 0.25 * gap  # many: most of the way
    assert adaptive.outcomes == 400
    assert _log_loss(adaptive, fresh) < _log_loss(PRIOR, fresh) - 0.3
    assert _log_loss(adaptive, fresh) < _log_loss(TRUTH, fresh) + 0.05


def test_outcomes_never_push_a_coefficient_against_its_features_sign() -> None:
    """A sweep where a rising correct-class probability comes with *not* grokking: the
    prob_slope shape may flatten to zero but not turn against grokking."""
    contrary = _predictor(intercept=0.0, loss_weight=0.0, prob_weight=-1.5)
    adaptive = SweepAdaptivePredictor(PRIOR)
    for judged, grokked in _sweep(contrary, 300, seed=3):
        adaptive.observe_outcome(judged, grokked)
    adaptive.refit()
    lower, upper = adaptive.bounds()
    assert np.all(adaptive.coef >= lower) and np.all(adaptive.coef <= upper)
    prob_ramps = adaptive.coef[5:9]
    assert np.all(prob_ramps >= 0) and prob_ramps.sum() < 0.25 * PRIOR.coef[5:9].sum()
    rising = [adaptive.predict_features({"prob_slope": v}).p_grok for v in np.linspace(-3, 3, 13)]
    assert np.all(np.diff(rising) >= 0)


def test_the_interval_starts_wider_than_the_priors_and_narrows_with_outcomes() -> None:
    probe = {"val_loss_slope": 1.0, "prob_slope": -1.0}
    adaptive = SweepAdaptivePredictor(PRIOR, prior_sd=0.3)

    def width(model: GrokPredictor) -> float:
        prediction = model.predict_features(probe)
        assert prediction.p_low <= prediction.p_grok <= prediction.p_high
        return prediction.p_high - prediction.p_low

    widths = [width(PRIOR), width(adaptive)]
    for count, (judged, grokked) in enumerate(_sweep(TRUTH, 300, seed=4), 1):
        adaptive.observe_outcome(judged, grokked)
        if count in (10, 300):
            widths.append(width(adaptive))
    assert widths[0] < widths[1]
    assert widths[1] > widths[2] > widths[3]


def test_a_refit_happens_only_when_an_outcome_arrived() -> None:
    adaptive = SweepAdaptivePredictor(PRIOR)
    sweep = _sweep(TRUTH, 200, seed=5)
    for judged, grokked in sweep[:-1]:
        adaptive.observe_outcome(judged, grokked)
    adaptive.refit()
    fitted = adaptive.coef
    adaptive.predict_features({"val_loss_slope": 0.5})
    assert adaptive.coef is fitted  # nothing new arrived: no refit
    adaptive.observe_outcome(*sweep[-1])
    adaptive.predict_features({"val_loss_slope": 0.5})
    assert adaptive.coef is not fitted  # the new outcome was fitted before predicting
    refitted = adaptive.coef
    adaptive.predict_features({"val_loss_slope": 0.5})
    assert adaptive.coef is refitted


def test_only_predictions_made_after_memorization_can_be_learned_from() -> None:
    adaptive = SweepAdaptivePredictor(PRIOR)
    adaptive.refit()  # nothing observed: the prior's coefficients
    assert np.array_equal(adaptive.coef, PRIOR.coef)
    early = Prediction(0.5, None, {"memorized": 0.0}, {}, None, 50.0)
    grokked = Prediction(1.0, 0.0, {"val_acc": 0.97}, {}, 100.0, 900.0)
    for prediction in (early, grokked):
        with pytest.raises(ValueError, match="after memorization"):
            adaptive.observe_outcome(prediction, True)
    with pytest.raises(ValueError, match="prior_sd"):
        SweepAdaptivePredictor(PRIOR, prior_sd=0.0)
    with pytest.raises(ValueError, match="intercept_sd"):
        SweepAdaptivePredictor(PRIOR, intercept_sd=math.inf)
