"""Label sets: the diagnoses a model predicts (code, name, malignant?) in its output order.

A label set is data, not code: a JSON list of `{"code", "name", "malignant"}` objects, read from a file
(`skinscan train --labels FILE`) or one of the built-in sets in `skinscan/labelsets/` (`ham10000`, the
default, and `isic2019`). Training stores the set in the checkpoint and export writes it into the ONNX
metadata, so every later step, and every client, reads the labels from the model it was given.

Imports nothing of ours, so the runtime, the metrics and the training code can all share it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

BUILTIN_LABEL_SETS = ("ham10000", "isic2019")
LABEL_FILE_EXAMPLE = '[{"code": "mel", "name": "Melanoma", "malignant": true}, {"code": "nv", ...}, ...]'


class LabelSetError(ValueError):
    """A label set file cannot be used; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class Diagnosis:
    code: str
    name: str
    malignant: bool


@dataclass(frozen=True)
class LabelSet:
    """An ordered tuple of diagnoses: position i is output i of the model (at least two, unique codes)."""

    diagnoses: tuple[Diagnosis, ...]

    def __post_init__(self):
        codes = [d.code for d in self.diagnoses]
        if len(codes) < 2:
            raise LabelSetError(f"a label set needs at least 2 diagnoses, got {codes}")
        duplicates = sorted({code for code in codes if codes.count(code) > 1})
        if duplicates:
            raise LabelSetError(f"label set lists the code(s) {', '.join(duplicates)} more than once")

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(d.code for d in self.diagnoses)

    @property
    def names(self) -> dict[str, str]:
        return {d.code: d.name for d in self.diagnoses}

    @property
    def malignant_codes(self) -> tuple[str, ...]:
        return tuple(d.code for d in self.diagnoses if d.malignant)

    def __len__(self) -> int:
        return len(self.diagnoses)

    def index(self, code: str) -> int:
        """Position of a diagnosis code in the model output; a clear error for unknown codes."""
        try:
            return self.codes.index(code)
        except ValueError:
            raise ValueError(f"unknown diagnosis code {code!r}; expected one of {', '.join(self.codes)} "
                             "(a data set with other labels needs its label set: --labels FILE)") from None

    def to_json(self) -> list[dict]:
        return [{"code": d.code, "name": d.name, "malignant": d.malignant} for d in self.diagnoses]

    @classmethod
    def from_metadata(cls, metadata: dict) -> LabelSet:
        """From a model package's parsed metadata (`skinscan.labels`, `.label_names`, `.malignant`)."""
        names, malignant = metadata.get("skinscan.label_names", {}), set(metadata.get("skinscan.malignant", []))
        return cls.from_json([{"code": code, "name": names.get(code, code), "malignant": code in malignant}
                              for code in metadata.get("skinscan.labels", [])], "the model's metadata")

    @classmethod
    def from_json(cls, items, source: str = "label set") -> LabelSet:
        """Build from the JSON form (a list of objects with `code`, `name`, `malignant`), checking every entry."""
        if not isinstance(items, list) or not items:
            raise LabelSetError(f"{source} must be a non-empty JSON list of diagnoses, e.g. {LABEL_FILE_EXAMPLE}")
        diagnoses = []
        for position, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("code"), str) or not item["code"].strip():
                raise LabelSetError(f"{source}: entry {position} needs a non-empty string \"code\", got {item!r}")
            malignant = item.get("malignant")
            if not isinstance(malignant, bool):
                raise LabelSetError(f"{source}: entry {position} ({item['code']!r}) needs \"malignant\": true or "
                                    f"false (it decides the screening flag), got {malignant!r}")
            diagnoses.append(Diagnosis(item["code"], str(item.get("name") or item["code"]), malignant))
        try:
            return cls(tuple(diagnoses))
        except LabelSetError as error:
            raise LabelSetError(f"{source}: {error}") from None


def load_label_set(name_or_path: str | Path | None = None) -> LabelSet:
    """A built-in label set by name (`ham10000`, `isic2019`), a JSON file, or HAM10000's for None."""
    if name_or_path is None:
        name_or_path = "ham10000"
    if str(name_or_path) in BUILTIN_LABEL_SETS:
        text = resources.files("skinscan").joinpath("labelsets", f"{name_or_path}.json").read_text()
        return LabelSet.from_json(json.loads(text), f"built-in label set {name_or_path}")
    path = Path(name_or_path)
    if not path.is_file():
        raise LabelSetError(f"no label set file at {path}; pass a JSON file ({LABEL_FILE_EXAMPLE}) or one of the "
                            f"built-in sets: {', '.join(BUILTIN_LABEL_SETS)}")
    try:
        items = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LabelSetError(f"{path} is not valid JSON ({error}); expected e.g. {LABEL_FILE_EXAMPLE}") from None
    return LabelSet.from_json(items, str(path))


# The default: HAM10000's seven diagnoses, in the output order of every HAM10000 model (alphabetical, as in
# the ISIC 2018 challenge). The names below are kept for the code that only ever deals with HAM10000.
HAM10000 = load_label_set("ham10000")
DIAGNOSES: tuple[Diagnosis, ...] = HAM10000.diagnoses
LABEL_CODES: tuple[str, ...] = HAM10000.codes
LABEL_NAMES: dict[str, str] = HAM10000.names
MALIGNANT_CODES: tuple[str, ...] = HAM10000.malignant_codes


def label_index(code: str) -> int:
    """Position of a HAM10000 diagnosis code in the model output; a clear error for unknown codes."""
    return HAM10000.index(code)
