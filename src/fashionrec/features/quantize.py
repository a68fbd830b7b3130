"""ONNX Runtime int8: the quantisation recipe (`Int8Recipe`), static quantisation of an exported fp32 model, and the
calibration photos each embedding job registers (part of its feature-cache key)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fashionrec.io import atomic_path


@dataclass(frozen=True)
class Int8Recipe:
    """How the ONNX Runtime int8 model is made (onnxruntime.quantization.quantize_static). Part of the int8 cache key.

    Measured on held-out H&M photos (docs/results/int8_calibration.md, `benchmarks/embed_speed.py --sweep-int8`): no
    recipe reaches mean cosine 0.99 to fp32. Fast recipes (uint8 activations, fused int8 kernels) reach 0.78-0.84
    whatever the calibration; symmetric int8 activations reach 0.97 but run no faster than ONNX Runtime fp32 (which
    is exact). The default is the fast recipe with the best cosine: Percentile on 512 photos, uint8 activations.
    """

    calibrate_method: str = "Percentile"  # MinMax | Entropy | Percentile
    percentile: float = 99.999
    calib_images: int = 512  # calibration photos (the first ones of the job, in order)
    activation_type: str = "QUInt8"  # QUInt8 (asymmetric) | QInt8 (symmetric)
    per_channel: bool = True
    exclude_first_last: bool = False  # True: stem conv, head conv (+ its activation, pooling) stay fp32
    quant_format: str = "QDQ"  # QDQ | QOperator (QOperator fails on this graph: "Graph is not a DAG")
    reduce_range: bool = False

    def key(self) -> str:
        return "q" + hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


INT8_RECIPE = Int8Recipe()
INT8_MEASURED_COSINE = "0.84"  # INT8_RECIPE's mean cosine to eager fp32 on held-out H&M photos (int8_calibration.md)


def quantize_int8(
    fp32_model: str | Path, out: str | Path, calib: np.ndarray, recipe: Int8Recipe = INT8_RECIPE, batch: int = 32
) -> Path:
    """Static int8 quantisation of an exported fp32 ONNX model, calibrated on `calib` ((N, 3, S, S) model inputs)."""
    import tempfile

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(
                [
                    {"x": np.ascontiguousarray(calib[i : i + batch], dtype=np.float32)}
                    for i in range(0, len(calib), batch)
                ]
            )

        def get_next(self):
            return next(self.items, None)

    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="fashionrec-q-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_model), str(pre))
        graph = onnx.load(str(pre)).graph
        exclude = []
        if recipe.exclude_first_last:
            convs = [n.name for n in graph.node if n.op_type == "Conv"]
            tail = [n.name for n in graph.node if n.op_type in {"GlobalAveragePool", "Flatten", "Gemm", "MatMul"}]
            exclude = convs[:1] + convs[-1:] + tail
            # the activation right after the head conv (its Clip/Relu) too, so the head runs in fp32 end to end
            if convs:
                outs = {o for n in graph.node if n.name == convs[-1] for o in n.output}
                exclude += [n.name for n in graph.node if set(n.input) & outs and n.op_type in {"Clip", "Relu"}]
        extra = {"ActivationSymmetric": recipe.activation_type == "QInt8"}
        if recipe.calibrate_method == "Percentile":
            extra["CalibPercentile"] = recipe.percentile
        with atomic_path(out, suffix=".tmp.onnx") as tmp_out:
            quantize_static(
                str(pre),
                str(tmp_out),
                _Reader(),
                nodes_to_exclude=exclude,
                quant_format=getattr(QuantFormat, recipe.quant_format),
                per_channel=recipe.per_channel,
                reduce_range=recipe.reduce_range,
                activation_type=getattr(QuantType, recipe.activation_type),
                weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, recipe.calibrate_method),
                extra_options=extra,
            )
    return out


_INT8_WARNED: list = []
_INT8_CALIB: dict = {}  # id(backbone) -> (hash, calibration inputs) registered by the embed functions


def calibration_hash(x) -> str:
    """The name of a set of calibration inputs (a CPU tensor or array) in cache keys."""
    x = x.numpy() if hasattr(x, "numpy") else np.asarray(x)
    return hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest()[:12]


def int8_calibration(backbone, path, calib_fn) -> str:
    """int8 only: take the job's first INT8_RECIPE.calib_images inputs as the calibration set, register it for the
    backbone, and return a suffix naming it for the feature-cache key (the quantised model, hence the features,
    depend on it). '' for every other path."""
    if path.precision != "int8":
        return ""
    c = calib_fn(INT8_RECIPE.calib_images)
    if c is None or len(c) == 0:
        return ""
    h = calibration_hash(c)
    _INT8_CALIB[id(backbone)] = (h, c)
    return f"-cal{h}"


def int8_calibration_of(backbone) -> tuple[str | None, object]:
    """(hash, inputs) the embed functions registered for `backbone`, else (None, None)."""
    return _INT8_CALIB.get(id(backbone), (None, None))


def warn_int8_once(log) -> None:
    if not _INT8_WARNED:
        _INT8_WARNED.append(1)
        log.warning(
            "onnx-int8: features differ from fp32 (mean cosine about %s on H&M photos, see "
            "docs/results/int8_calibration.md); never chosen automatically, use it only knowingly",
            INT8_MEASURED_COSINE,
        )
