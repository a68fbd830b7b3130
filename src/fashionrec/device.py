"""Where tensors run: `--device auto|cpu|cuda` resolved once, and mixed precision where it pays.

`auto` is CUDA when PyTorch sees a GPU, else the CPU. Mixed precision (bfloat16 where the GPU supports it,
else float16) is used on CUDA only; on the CPU everything stays float32, so CPU results do not change.
"""

from __future__ import annotations

import contextlib

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(spec: str | None = "auto"):
    """The torch.device for `spec` ('auto', 'cpu', 'cuda' or 'cuda:N'); a clear error when CUDA is asked for
    and absent."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {spec}: PyTorch sees no CUDA GPU on this machine (use --device cpu or auto)")
        return torch.device(spec)
    raise ValueError(f"--device {spec!r}: expected one of auto, cpu, cuda (or cuda:N)")


def autocast(device):
    """Mixed precision on CUDA (bfloat16 where supported, else float16); a no-op context on the CPU."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def add_device_option(parser) -> None:
    """The `--device` option every command that runs an image model shares."""
    parser.add_argument(
        "--device",
        default="auto",
        metavar="{auto,cpu,cuda}",
        help="where the image model runs: auto = CUDA when PyTorch sees a GPU, else the CPU; "
        "mixed precision is used on CUDA only",
    )
