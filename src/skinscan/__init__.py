"""skinscan: offline, on-device skin-lesion screening (a screening aid, not a diagnosis).

`from skinscan import Classifier, Prediction` works, but `import skinscan` alone loads neither onnxruntime nor
numpy: the two names are looked up in `skinscan.runtime` on first use (PEP 562 module `__getattr__`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

# ONNX Runtime >= 1.29 collects usage telemetry on Linux and macOS too (it writes a device id under
# ~/.cache/Microsoft/DeveloperTools and may send events to Microsoft) unless this variable is set, and it reads
# the variable when it is imported. skinscan promises that nothing leaves the device, so every entry point sets
# it first: importing anything of skinscan runs this file before onnxruntime can be imported through it. A
# user who wants ONNX Runtime's telemetry can set ORT_DISABLE_TELEMETRY=0 themselves.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

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
