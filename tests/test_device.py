import pytest
import torch

from fashionrec.device import autocast, resolve_device


def test_auto_and_cpu_resolve_to_what_torch_sees():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_unknown_device_names_the_choices():
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        resolve_device("tpu")


def test_cpu_autocast_keeps_float32():
    x = torch.randn(4, 4)
    with autocast("cpu"):
        y = x @ x
    assert y.dtype == torch.float32
