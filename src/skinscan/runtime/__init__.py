"""The torch-free half of skinscan: load a model package (with its sha256 checks), decode and resize images,
run the graph with ONNX Runtime, judge "cannot assess", draw explanations, serve the web app, benchmark.

Imports nothing of `skinscan.factory`, torch, pandas, scipy, scikit-learn or matplotlib (an import-linter
contract in pyproject.toml checks it), so `pip install skinscan` without extras runs all of it.
"""

from skinscan.runtime.classifier import (
    CAM,
    CLASSIFICATION_OUTPUTS,
    FP32_FILE,
    IMAGE_SUFFIXES,
    INPUT_NAME,
    INT8_FILE,
    PRECISIONS,
    PROBABILITIES,
    Classifier,
    ModelPackageError,
    Prediction,
    bundled_package_dir,
    find_images,
)

__all__ = ["CAM", "CLASSIFICATION_OUTPUTS", "FP32_FILE", "IMAGE_SUFFIXES", "INPUT_NAME", "INT8_FILE", "PRECISIONS",
           "PROBABILITIES", "Classifier", "ModelPackageError", "Prediction", "bundled_package_dir", "find_images"]
