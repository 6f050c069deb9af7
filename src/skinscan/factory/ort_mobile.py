"""The ONNX Runtime Mobile form of a model (`.ort` + required-operators config) for native apps.

A reduced ORT build (Android/iOS) includes only the operators a model needs; the config lists them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def convert_to_ort(onnx_path: str | Path) -> list[Path]:
    """ONNX Runtime Mobile form (`.ort`) and its required-operators config, for native apps' reduced builds."""
    onnx_path = Path(onnx_path)
    command = [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(onnx_path),
               "--output_dir", str(onnx_path.parent), "--optimization_style", "Fixed"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        output = result.stdout[-2000:] + result.stderr[-2000:]
        raise RuntimeError(f"ORT format conversion failed for {onnx_path}:\n{output}")
    ort_path = onnx_path.with_suffix(".ort")
    config_path = onnx_path.with_suffix(".required_operators.config")
    return [p for p in (ort_path, config_path) if p.is_file()]
