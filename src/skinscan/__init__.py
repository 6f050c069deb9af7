"""skinscan: offline, on-device skin-lesion screening (a screening aid, not a diagnosis).

`from skinscan import Classifier, Prediction` works, but `import skinscan` alone loads neither onnxruntime nor
numpy: the two names are looked up in `skinscan.runtime` on first use (PEP 562 module `__getattr__`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

DISCLAIMER = (
    "skinscan is a screening aid, not a diagnosis. Whatever it shows, see a dermatologist "
    "about any lesion that worries you or changes."
)

_RUNTIME_NAMES = ("Classifier", "Prediction")

if TYPE_CHECKING:
    from skinscan.runtime.classifier import Classifier, Prediction


def __getattr__(name: str):
    if name in _RUNTIME_NAMES:
        import skinscan.runtime

        return getattr(skinscan.runtime, name)
    raise AttributeError(f"module 'skinscan' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_RUNTIME_NAMES])


__all__ = ["DISCLAIMER", "Classifier", "Prediction", "__version__"]
