"""Temperature scaling (Guo et al. 2017): one scalar T fitted on validation logits by minimising NLL.

numpy + scipy only, so export (which bakes 1/T into the graph) and evaluation share one definition.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
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
