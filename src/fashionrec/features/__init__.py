"""Batched feature extraction with progress, parallel decoding, and an on-disk cache.

The cache key is backbone (name + weights) + preprocessing + inference path (+ the device, for CUDA) + input data:
- arrays (Fashion-MNIST): a hash of the array bytes;
- image files: per photo, a hash of its bytes (`FeatureStore`, one SQLite database for every folder and model):
  a photo embedded before is reused under any path or name (a moved, copied or hard-linked folder), changed or
  new photos are computed, so adding ten images to a catalog of 100,000 embeds ten.

Its parts: `preprocess` (pixels -> model input), `paths` (how the forward pass runs), `forward` (running a
backbone over a batch: `run_backbone`), `onnx` (export, ONNX Runtime sessions), `quantize` (int8), `probe` (the
automatic path), `store` (the feature store and cache), `extract` (in-memory images), `files` (image files).
"""

from fashionrec.features.extract import embed_arrays, embed_bytes, embed_pil
from fashionrec.features.files import (
    EmbeddedImages,
    auto_input_size,
    decode_images_to_array,
    embed_image_files,
    file_fingerprint,
)
from fashionrec.features.forward import model_key, prepare_for_path, run_backbone, to_device
from fashionrec.features.onnx import export_onnx, onnx_function, onnx_providers
from fashionrec.features.paths import InferencePath, cpu_supports_bf16
from fashionrec.features.preprocess import DECODE_VERSION, Preprocess
from fashionrec.features.probe import (
    PROBE_FILE,
    PROBE_MAX_BATCH,
    ProbeResult,
    auto_candidates,
    choose_path,
    fastest_path,
    measure_path,
    probe_key,
    probe_paths,
    resolve_path,
)
from fashionrec.features.quantize import INT8_MEASURED_COSINE, INT8_RECIPE, Int8Recipe, int8_calibration, quantize_int8
from fashionrec.features.store import FEATURE_DB, FeatureCache, FeatureStore, content_hash

__all__ = [
    "DECODE_VERSION",
    "FEATURE_DB",
    "INT8_MEASURED_COSINE",
    "INT8_RECIPE",
    "PROBE_FILE",
    "PROBE_MAX_BATCH",
    "EmbeddedImages",
    "FeatureCache",
    "FeatureStore",
    "InferencePath",
    "Int8Recipe",
    "Preprocess",
    "ProbeResult",
    "auto_candidates",
    "auto_input_size",
    "choose_path",
    "content_hash",
    "cpu_supports_bf16",
    "decode_images_to_array",
    "embed_arrays",
    "embed_bytes",
    "embed_image_files",
    "embed_pil",
    "export_onnx",
    "fastest_path",
    "file_fingerprint",
    "int8_calibration",
    "measure_path",
    "model_key",
    "onnx_function",
    "onnx_providers",
    "prepare_for_path",
    "probe_key",
    "probe_paths",
    "quantize_int8",
    "resolve_path",
    "run_backbone",
    "to_device",
]
