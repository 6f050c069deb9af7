"""The seven HAM10000 diagnoses: codes, names, malignancy and the output order every model uses.

Imports nothing of ours, so the runtime, the metrics and the training code can all share it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Diagnosis:
    code: str
    name: str
    malignant: bool


# Output order of every skinscan model (alphabetical by code, as in the ISIC 2018 challenge).
DIAGNOSES: tuple[Diagnosis, ...] = (
    Diagnosis("akiec", "Actinic keratosis / intraepithelial carcinoma (Bowen's disease)", True),
    Diagnosis("bcc", "Basal cell carcinoma", True),
    Diagnosis("bkl", "Benign keratosis-like lesion", False),
    Diagnosis("df", "Dermatofibroma", False),
    Diagnosis("mel", "Melanoma", True),
    Diagnosis("nv", "Melanocytic nevus", False),
    Diagnosis("vasc", "Vascular lesion", False),
)

LABEL_CODES: tuple[str, ...] = tuple(d.code for d in DIAGNOSES)
LABEL_NAMES: dict[str, str] = {d.code: d.name for d in DIAGNOSES}
MALIGNANT_CODES: tuple[str, ...] = tuple(d.code for d in DIAGNOSES if d.malignant)


def label_index(code: str) -> int:
    """Position of a diagnosis code in the model output; a clear error for unknown codes."""
    try:
        return LABEL_CODES.index(code)
    except ValueError:
        raise ValueError(f"unknown diagnosis code {code!r}; expected one of {', '.join(LABEL_CODES)}") from None
