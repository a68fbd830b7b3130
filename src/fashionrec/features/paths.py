"""How the forward pass runs (`InferencePath`: eager, channels-last, bf16, ONNX Runtime fp32 / int8) and which numbers
each path computes (the feature-cache key)."""

from __future__ import annotations

from dataclasses import dataclass

from fashionrec.features.quantize import INT8_RECIPE


@dataclass(frozen=True)
class InferencePath:
    """How the forward pass runs. Eager fp32 PyTorch is the reference. Fast paths: channels-last memory format,
    bf16 autocast (fast where the CPU has AMX/AVX512-BF16), ONNX Runtime fp32, ONNX Runtime int8 (static QDQ
    quantisation; explicit opt-in only, its features drift from fp32's: see `Int8Recipe`).

    `InferencePath.auto()` (name 'auto') is not a path but a request: the embed functions resolve it with
    `resolve_path`, a short on-machine probe whose choice is cached in the workspace.
    """

    precision: str = "fp32"  # fp32 | bf16 | int8
    channels_last: bool = False
    engine: str = "torch"  # torch | onnx | auto

    def __post_init__(self):
        if self.engine not in {"torch", "onnx", "auto"} or self.precision not in {"fp32", "bf16", "int8"}:
            raise ValueError(f"bad inference path {self}")
        if self.engine == "torch" and self.precision == "int8":
            raise ValueError("int8 runs through ONNX Runtime: InferencePath('int8', engine='onnx')")
        if self.engine == "onnx" and self.precision == "bf16":
            raise ValueError("ONNX paths are fp32 or int8")
        if self.engine == "auto" and (self.precision != "fp32" or self.channels_last):
            raise ValueError("use InferencePath.auto() for the automatic choice")

    @classmethod
    def auto(cls) -> InferencePath:
        return cls(engine="auto")

    @property
    def is_auto(self) -> bool:
        return self.engine == "auto"

    def key(self) -> str:
        if self.is_auto:
            raise ValueError("InferencePath.auto() has no key: resolve it first (features.resolve_path)")
        return f"{self.engine}-{self.precision}-{'cl' if self.channels_last else 'nchw'}"

    def numerics_key(self) -> str:
        """What the feature cache keys on: which NUMBERS this path computes, not how fast.

        Every fp32 path (eager, channels-last, ONNX Runtime fp32) computes the same features up to fp32 rounding
        (measured cosine 1.0000, max abs difference ~1e-5, no larger than eager's own run-to-run and
        thread-count differences), so they share the eager key: switching between them (e.g. the probe choosing
        differently on another machine) reuses the cached features. bf16 and int8 change the numbers (cosine
        0.999, resp. much lower), so each keeps its own key; int8's also names its quantisation recipe.
        """
        if self.is_auto:
            self.key()  # raises: resolve first
        if self.precision == "fp32":
            return InferencePath().key()
        if self.precision == "int8":
            return f"{self.key()}-{INT8_RECIPE.key()}"
        return self.key()

    @property
    def name(self) -> str:
        """The name `parse` reads back: 'fp32', 'fp32-cl', 'bf16', 'bf16-cl', 'onnx-fp32', 'onnx-int8', 'auto'."""
        if self.is_auto:
            return "auto"
        if self.engine == "onnx":
            return f"onnx-{self.precision}"
        return self.precision + ("-cl" if self.channels_last else "")

    @classmethod
    def parse(cls, name: str) -> InferencePath:
        """'auto', 'fp32', 'fp32-cl', 'bf16', 'bf16-cl', 'onnx-fp32', 'onnx-int8'."""
        table = {
            "fp32": cls(),
            "fp32-cl": cls("fp32", True),
            "bf16": cls("bf16"),
            "bf16-cl": cls("bf16", True),
            "onnx-fp32": cls("fp32", engine="onnx"),
            "onnx-int8": cls("int8", engine="onnx"),
            "auto": cls.auto(),
        }
        if name not in table:
            raise ValueError(f"unknown inference path '{name}'; choose from {sorted(table)}")
        return table[name]


def cpu_supports_bf16() -> bool:
    """AMX or AVX512-BF16: where bf16 autocast is fast on CPU (elsewhere it is emulated and slower)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags
