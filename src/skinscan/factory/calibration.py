"""Temperature scaling (Guo et al. 2017): one scalar T fitted on validation logits by minimising NLL.

numpy + scipy only, so export (which bakes 1/T into the graph) and evaluation share one definition.
`fit_temperature_and_bias` is the comparison the evaluation report shows beside it: T plus one bias per
class, which can undo the class prior the training shifts on purpose (better calibrated, but it moves the
argmax, so balanced accuracy changes; see `docs/RESULTS.md`).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import log_softmax


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    return float(-log_softmax(logits / temperature, axis=1)[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature that minimises the NLL of `labels` under softmax(logits / T).

    Searched on log T (bounded, so a degenerate validation set cannot give 0 or infinity). Scaling by
    one positive scalar never changes the argmax, so accuracy and balanced accuracy are unaffected.
    """
    if len(labels) == 0:
        raise ValueError("cannot fit a temperature on an empty validation set")
    logits = np.asarray(logits, dtype=np.float64)
    result = minimize_scalar(lambda log_t: negative_log_likelihood(logits, labels, float(np.exp(log_t))),
                             bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                             options={"xatol": 1e-4})
    return float(np.exp(result.x))


def fit_temperature_and_bias(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """T and per-class biases b (mean 0) minimising the NLL of `labels` under softmax(logits / T + b).

    Unlike T alone this changes which class is largest: it is reported for comparison, never exported.
    """
    if len(labels) == 0:
        raise ValueError("cannot fit a calibration on an empty validation set")
    logits = np.asarray(logits, dtype=np.float64)
    rows = np.arange(len(labels))

    def loss(params: np.ndarray) -> float:
        return float(-log_softmax(logits / np.exp(params[0]) + params[1:], axis=1)[rows, labels].mean())

    start = np.concatenate([[np.log(fit_temperature(logits, labels))], np.zeros(logits.shape[1])])
    result = minimize(loss, start, method="L-BFGS-B",
                      bounds=[(np.log(0.05), np.log(20.0))] + [(-20.0, 20.0)] * logits.shape[1])
    bias = result.x[1:] - result.x[1:].mean()
    return float(np.exp(result.x[0])), bias
