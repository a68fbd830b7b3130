"""Hostile input: model files that must not run code, clear one-line errors instead of tracebacks."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from fashionrec.errors import FashionrecError
from fashionrec.training.checkpoint import load_classifier


class _Payload:
    """Unpickling this calls `open(marker, 'w')`: the shape of any pickle code-execution payload."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_model_file_with_pickle_payload_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"kind": "linear-probe", "payload": _Payload(marker)}, evil)
    with pytest.raises(FashionrecError, match="refused to load"):
        load_classifier(evil)
    assert not marker.exists()  # weights_only=False created it while loading


def test_old_pickled_checkpoint_gets_a_clear_error(tmp_path):
    old = tmp_path / "old.pt"  # format 1: numpy arrays pickled into the torch file
    torch.save({"kind": "linear-probe", "classes": ["a", "b"], "probe": {"mean": np.zeros(3)}}, old)
    with pytest.raises(FashionrecError, match=r"old.pt: refused to load.*retrain"):
        load_classifier(old)


@pytest.mark.parametrize("content", [None, b"", b"not a model at all"])
def test_missing_or_foreign_model_file(tmp_path, content):
    p = tmp_path / "model.pt"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(FashionrecError, match=r"model.pt: (model file not found|not a model checkpoint)"):
        load_classifier(p)


def test_predict_with_missing_model_prints_one_line_no_traceback(tmp_path):
    img = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(img)
    r = subprocess.run(
        [sys.executable, "-m", "fashionrec.cli", "predict", "--model", str(tmp_path / "nope.pt"), str(img)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines == [f"fashionrec: error: {tmp_path / 'nope.pt'}: model file not found"], r.stderr


def test_write_token_from_flag_or_environment(monkeypatch):
    from argparse import Namespace

    from fashionrec.cli.serve import WRITE_TOKEN_ENV, write_token

    monkeypatch.delenv(WRITE_TOKEN_ENV, raising=False)
    assert write_token(Namespace(write_token=None)) is None  # writes disabled by default
    monkeypatch.setenv(WRITE_TOKEN_ENV, "from-the-environment-123")
    assert write_token(Namespace(write_token=None)) == "from-the-environment-123"
    assert write_token(Namespace(write_token="from-the-command-line-1")) == "from-the-command-line-1"
    for bad in ("short", "has a space in it 12345"):
        with pytest.raises(FashionrecError, match="at least 16 printable characters"):
            write_token(Namespace(write_token=bad))


def test_serve_refuses_writes_with_several_workers(monkeypatch):
    """A write token with --workers 2 is refused before anything is loaded (a new arrival would reach one worker)."""
    import fashionrec.serving.server as server
    from fashionrec.errors import FashionrecError
    from fashionrec.workflows.serve import serve_shop

    monkeypatch.setattr(server, "run", lambda *a, **k: pytest.fail("the server started"))
    with pytest.raises(FashionrecError, match="one worker"):
        serve_shop("unused", workers=2, write_token="a-long-enough-token-123")
    with pytest.raises(FashionrecError, match="positive"):
        serve_shop("unused", workers=0)
