"""The automatic inference path: a short on-machine probe of the candidate paths, its choice cached in the
workspace (`resolve_path`)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from fashionrec.backbones.base import Backbone
from fashionrec.features.forward import prepare_for_path, run_backbone
from fashionrec.features.paths import InferencePath, cpu_supports_bf16
from fashionrec.features.preprocess import Preprocess
from fashionrec.features.quantize import INT8_RECIPE
from fashionrec.io import default_workspace, write_json

log = logging.getLogger(__name__)

PROBE_VERSION = 1
PROBE_FILE = "inference_probe.json"
PROBE_MIN_MEAN_COSINE = 0.99  # a candidate's features vs eager fp32 on the probe batch: mean cosine at least this
PROBE_MIN_COSINE = 0.95  # ... and no single image below this (bf16 on H&M photos: min 0.97, p5 0.99)
PROBE_MAX_BATCH = 32  # the probe times one batch of min(batch_size, 32) images at the real input size
PROBE_REPS = 3  # timed runs per candidate after one warm-up; the fastest run counts (robust to load)


@dataclass(frozen=True)
class ProbeResult:
    """One candidate's probe measurement: seconds for one batch (best of PROBE_REPS) and features cosine to eager."""

    seconds: float | None
    cos_mean: float | None = None
    cos_min: float | None = None
    error: str | None = None

    @property
    def passed(self) -> bool:
        return (
            self.error is None
            and self.cos_mean is not None
            and self.cos_mean >= PROBE_MIN_MEAN_COSINE
            and self.cos_min >= PROBE_MIN_COSINE
        )


def auto_candidates() -> list[str]:
    """Paths the probe tries on this machine. Eager fp32 (the reference) and fp32 channels-last always; bf16
    channels-last where the CPU has native bf16 (elsewhere autocast emulates it, several times slower); ONNX
    Runtime fp32 where onnxruntime and onnx are installed. ONNX Runtime int8 is never a candidate: no quantisation
    recipe reached the feature-fidelity bar (docs/results/int8_calibration.md); it stays an explicit opt-in."""
    import importlib.util

    names = ["fp32", "fp32-cl"]
    if cpu_supports_bf16():
        names.append("bf16-cl")
    if importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None:
        names.append("onnx-fp32")
    return names


def _machine_id() -> str:
    """CPU model + a hash of its feature flags (what makes one path faster than another here)."""
    model, flags = "unknown", ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        import platform

        model = platform.processor() or platform.machine()
    return f"{model}|flags:{hashlib.sha1(flags.encode()).hexdigest()[:12]}"


def probe_key(backbone: Backbone, pre: Preprocess, batch_size: int, candidates: Sequence[str]) -> dict:
    """Everything that can change which path is fastest or whether it passes: machine (CPU model + flags, threads),
    library versions, backbone weights, input size, batch size, the candidates and the thresholds."""
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    return {
        "version": PROBE_VERSION,
        "machine": _machine_id(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "onnxruntime": ort_version,
        "backbone": backbone.name,
        "weights": backbone.feature_key(),
        "input_size": int(pre.input_size),
        "batch_size": int(batch_size),
        "candidates": list(candidates),
        "min_mean_cosine": PROBE_MIN_MEAN_COSINE,
        "min_cosine": PROBE_MIN_COSINE,
        "int8_recipe": INT8_RECIPE.key() if "onnx-int8" in candidates else None,
    }


def _key_hash(key: dict) -> str:
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def measure_path(backbone: Backbone, x: torch.Tensor, path: InferencePath) -> tuple[float, np.ndarray]:
    """Best-of-PROBE_REPS seconds for one forward of batch `x` (after one warm-up that exports/compiles), + features."""
    import copy
    import time

    bb = copy.deepcopy(backbone) if (path.channels_last and path.engine == "torch") else backbone
    prepare_for_path(bb, path)
    feats = run_backbone(bb, x, path).numpy()
    best = float("inf")
    for _ in range(PROBE_REPS):
        t = time.perf_counter()
        run_backbone(bb, x, path)
        best = min(best, time.perf_counter() - t)
    return best, feats


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-12)


def probe_paths(
    backbone: Backbone, x: torch.Tensor, candidates: Sequence[str], measure=measure_path
) -> dict[str, ProbeResult]:
    """Time each candidate on batch `x` and compare its features with eager fp32 (measured first, the reference).
    `measure(backbone, x, path) -> (seconds, features)` is injectable so the choice can be tested deterministically."""
    names = ["fp32"] + [c for c in candidates if c != "fp32"]
    results: dict[str, ProbeResult] = {}
    ref = None
    for name in names:
        try:
            sec, feats = measure(backbone, x, InferencePath.parse(name))
        except Exception as e:  # a path that cannot run here (export failure, missing kernel) is reported, not chosen
            if name == "fp32":
                raise
            log.warning("inference probe: %s failed (%s: %s)", name, type(e).__name__, e)
            results[name] = ProbeResult(None, error=f"{type(e).__name__}: {e}")
            continue
        feats = np.asarray(feats, dtype=np.float32)
        if ref is None:
            ref = feats
        cos = _cosines(feats, ref)
        results[name] = ProbeResult(float(sec), float(cos.mean()), float(cos.min()))
    return results


def choose_path(results: dict[str, ProbeResult]) -> str:
    """The fastest candidate whose features pass the cosine check (eager fp32 always passes)."""
    ok = {k: r for k, r in results.items() if r.passed}
    if not ok:
        return "fp32"
    return min(ok, key=lambda k: ok[k].seconds)


def _describe(results: dict[str, ProbeResult]) -> str:
    parts = []
    for k, r in results.items():
        if r.error is not None:
            parts.append(f"{k} failed")
        else:
            parts.append(
                f"{k} {1000 * r.seconds:.0f} ms cos {r.cos_mean:.4f}/{r.cos_min:.4f}"
                + ("" if r.passed else " (fails cosine check)")
            )
    return ", ".join(parts)


def _read_probe_file(p: Path) -> dict:
    try:
        data = json.loads(p.read_text())
        return data if isinstance(data, dict) else {}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:  # a damaged probe cache is re-probed, never fatal
        log.warning("%s: unreadable inference probe cache (%s); probing again", p, e)
        return {}


def _probed_busy_now_idle(rec: dict) -> bool:
    """True when a cached probe ran while other jobs loaded every core (its timings measured the contention: e.g.
    onnx-fp32 looked 2x faster than bf16 under load, bf16 is faster when idle) and the machine is idle now."""
    then = rec.get("load_average")
    if not isinstance(then, (int, float)) or not hasattr(os, "getloadavg"):
        return False
    cores = os.cpu_count() or 1
    return then > cores and os.getloadavg()[0] < cores / 2


def resolve_path(
    path: InferencePath | str | None,
    backbone: Backbone,
    pre: Preprocess,
    batch_size: int,
    *,
    sample=None,
    workspace: str | Path | None = None,
    candidates: Sequence[str] | None = None,
    measure=measure_path,
    reprobe: bool = False,
    device=None,
) -> InferencePath:
    """An explicit path is returned as is. `auto` (or None) is resolved by a probe: each candidate path runs one
    batch of min(batch_size, 32) real inputs at the real input size; the fastest whose features match eager fp32
    (mean cosine >= 0.99, min >= 0.95) wins. The choice and the measured times are cached in
    `<workspace>/inference_probe.json` under `probe_key` (machine, versions, weights, input size, batch size), so
    later runs reuse it without probing; change any of those and it is probed again.

    `sample()` returns the probe batch (a normalised (B, 3, S, S) tensor); it is only called when probing.
    `reprobe=True` ignores the cached choice and replaces it; a choice probed while every core was busy (the record
    keeps the load average) is probed again, once, when the machine is idle.
    On a CUDA `device` `auto` is eager torch (under mixed precision there): the candidates are CPU paths.
    """
    if isinstance(path, str):
        path = InferencePath.parse(path)
    if path is not None and not path.is_auto:
        return path
    if device is not None and torch.device(device).type == "cuda":
        return InferencePath()
    candidates = list(candidates if candidates is not None else auto_candidates())
    key = probe_key(backbone, pre, batch_size, candidates)
    h = _key_hash(key)
    p = Path(workspace or default_workspace()) / PROBE_FILE
    rec = _read_probe_file(p).get(h)
    if isinstance(rec, dict) and _probed_busy_now_idle(rec):
        log.info(
            "inference path auto: the cached probe ran under load average %.1f, the machine is idle now: probing again",
            rec["load_average"],
        )
        reprobe = True
    if not reprobe and isinstance(rec, dict) and rec.get("key") == key and rec.get("chosen") in candidates + ["fp32"]:
        log.info(
            "inference path auto: %s (cached probe of %s in %s: %s)",
            rec["chosen"],
            rec.get("when", "?"),
            p,
            rec.get("summary", ""),
        )
        return InferencePath.parse(rec["chosen"])
    if sample is None:
        raise ValueError("resolve_path: no cached probe and no sample batch to probe with")
    x = sample()
    if x is None or len(x) == 0:
        log.info("inference path auto: fp32 (nothing to probe with)")
        return InferencePath()
    x = x[:PROBE_MAX_BATCH]
    import datetime

    results = probe_paths(backbone, x, candidates, measure=measure)
    chosen = choose_path(results)
    summary = _describe(results)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    log.info(
        "inference path auto: chose %s, the fastest whose features match eager fp32 (probe on %s, load "
        "average %s: %s); cached in %s",
        chosen,
        "x".join(map(str, x.shape)),
        f"{load:.1f}" if load is not None else "?",
        summary,
        p,
    )
    rec = {
        "key": key,
        "chosen": chosen,
        "summary": summary,
        "load_average": load,
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "results": {k: asdict(r) | {"passed": r.passed} for k, r in results.items()},
    }
    try:
        data = _read_probe_file(p)  # re-read: another process may have added its own machine's record
        data[h] = rec
        write_json(p, data)
    except OSError as e:
        log.warning("could not cache the inference probe in %s (%s); it will run again next time", p, e)
    return InferencePath.parse(chosen)


def fastest_path(
    backbone: Backbone | None = None,
    pre: Preprocess | None = None,
    batch_size: int = 64,
    *,
    sample=None,
    workspace: str | Path | None = None,
) -> InferencePath:
    """The automatic inference path. Without a backbone: `InferencePath.auto()`, which the embed functions resolve
    with the backbone, input size and batch size they actually use (probe or cached choice). With one: resolved
    now (see `resolve_path`). benchmarks/embed_speed.py prints every path's speed and cosine and the probe's pick."""
    if backbone is None:
        return InferencePath.auto()
    return resolve_path(
        InferencePath.auto(),
        backbone,
        pre or Preprocess.for_backbone(backbone),
        batch_size,
        sample=sample,
        workspace=workspace,
    )
