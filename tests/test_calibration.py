"""Temperature scaling and the temperature + class-bias calibrator the evaluation report compares it with."""

import numpy as np
import pytest

from skinscan.factory.calibration import fit_temperature, fit_temperature_and_bias, negative_log_likelihood


def sampled_logits(n: int, temperature: float, prior_shift: np.ndarray, seed: int = 0):
    """Labels drawn from softmax(true_logits); the model reports (true_logits - prior_shift) * temperature."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0, 2, (n, len(prior_shift)))
    probabilities = np.exp(true_logits - true_logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    labels = np.array([rng.choice(len(p), p=p) for p in probabilities])
    return (true_logits - prior_shift) * temperature, labels


def test_temperature_recovers_an_overconfident_scale():
    logits, labels = sampled_logits(6000, 2.5, np.zeros(4))
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.1)


def test_temperature_and_bias_undo_a_shifted_prior_that_temperature_alone_cannot():
    shift = np.array([1.5, -0.5, -0.5, -0.5])
    logits, labels = sampled_logits(8000, 1.5, shift, seed=1)
    t_only = fit_temperature(logits, labels)
    temperature, bias = fit_temperature_and_bias(logits, labels)
    assert temperature == pytest.approx(1.5, rel=0.1)
    np.testing.assert_allclose(bias, shift - shift.mean(), atol=0.15)
    calibrated = logits / temperature + bias
    assert negative_log_likelihood(calibrated, labels) < negative_log_likelihood(logits, labels, t_only) - 0.02
    with pytest.raises(ValueError, match="empty"):
        fit_temperature_and_bias(np.zeros((0, 4)), np.zeros(0, int))
