"""The package's `skinscan.*` ONNX metadata, read and written without torch.

Why its own module: export (torch) writes it, while quantize and the INT8 gate refit (onnx only) read or
rewrite it; one place keeps the rule "every value is a JSON string" in one spot. (The model card reads it with
ONNX Runtime, so that it needs no onnx.)
"""

from __future__ import annotations

import json

import onnx


def set_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Add or replace `metadata_props` entries (values already JSON strings), keeping the others."""
    existing = {p.key: p for p in model.metadata_props}
    for key, value in metadata.items():
        prop = existing.get(key) or model.metadata_props.add()
        prop.key, prop.value = key, value


def read_metadata(model: onnx.ModelProto) -> dict:
    """Every metadata entry, parsed from its JSON string."""
    return {p.key: json.loads(p.value) for p in model.metadata_props}
