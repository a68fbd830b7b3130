"""Packaging: Python version, dependency ranges vs the tested constraints, extras, missing-extra messages, LICENSE."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
EXACT_ALLOWED = {"torch", "torchvision"}  # the releases on this workplace's disk


def _requirements() -> list[Requirement]:
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    for extra in PROJECT["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra]
    return [r for r in reqs if canonicalize_name(r.name) != "fashionrec"]


def _constraints() -> dict[str, Version]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, version = line.partition("==")
        assert version, f"constraints.txt: {line!r} is not NAME==VERSION"
        out[canonicalize_name(name)] = Version(version)
    return out


def _minimum_python(spec: str) -> tuple[int, int]:
    lows = [Version(s.version) for s in SpecifierSet(spec) if s.operator in (">=", "==", "~=")]
    assert lows, f"requires-python {spec!r} has no lower bound"
    v = max(lows)
    return v.major, v.minor


def test_requires_python_covers_what_the_code_uses():
    """tomllib and datetime.UTC are 3.11: requires-python must not promise less."""
    needs = (3, 8)
    for p in (ROOT / "src").rglob("*.py"):
        text = p.read_text()
        if re.search(r"^\s*import tomllib|from tomllib import", text, re.M) or re.search(
            r"datetime\.UTC\b|from datetime import[^\n]*\bUTC\b", text
        ):
            needs = max(needs, (3, 11))
    assert _minimum_python(PROJECT["requires-python"]) >= needs
    assert sys.version_info[:2] >= _minimum_python(PROJECT["requires-python"])


def test_only_torch_and_torchvision_are_exact_pins():
    for r in _requirements():
        exact = [s for s in r.specifier if s.operator in ("==", "===")]
        if canonicalize_name(r.name) in EXACT_ALLOWED:
            assert exact, f"{r.name} should stay pinned to the release on disk"
        else:
            assert not exact, f"{r}: a range belongs in pyproject.toml, the exact version in constraints.txt"
            assert r.specifier, f"{r.name} has no version range"


def test_constraints_pin_every_dependency_inside_its_range():
    pins = _constraints()
    assert "fashionrec" not in pins
    for r in _requirements():
        name = canonicalize_name(r.name)
        assert name in pins, f"constraints.txt has no version for {r.name}"
        assert r.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {r.name}=={pins[name]}, outside pyproject's {r.specifier}"
        )


def test_extras_and_setup_script_agree():
    extras = PROJECT["optional-dependencies"]
    assert {"serve", "distributed", "text", "fast", "test", "dev"} <= set(extras)
    uvloop = [Requirement(r) for r in extras["serve"] if Requirement(r).name == "uvloop"]
    assert uvloop and uvloop[0].marker is not None and "win32" in str(uvloop[0].marker)
    assert not any(Requirement(r).name in {"fastapi", "uvicorn", "uvloop", "ray"} for r in PROJECT["dependencies"])
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    m = re.search(r"pip install [^\n]*-c constraints\.txt[^\n]*-e '\.\[([a-z,]+)\]'", setup)
    assert m, "setup.sh must install the package with -c constraints.txt"
    installed = set(m.group(1).split(","))
    assert installed == set(extras) - {"dev"}, f"setup.sh installs {installed}, the extras are {set(extras)}"
    dev = Requirement(extras["dev"][0])
    assert dev.name == "fashionrec" and dev.extras == set(extras) - {"dev"}


def test_license_file_matches_pyproject():
    assert PROJECT["license"]["text"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


def test_server_does_not_hard_wire_uvloop():
    text = (ROOT / "src" / "fashionrec" / "serving" / "server.py").read_text()
    assert not re.search(r"loop\s*=\s*['\"]uvloop['\"]", text)
    assert not re.search(r"http\s*=\s*['\"]httptools['\"]", text)


# ---------------------------------------------------------------- missing extras
def test_require_names_the_extra(monkeypatch):
    from fashionrec.errors import FashionrecError
    from fashionrec.extras import available, require

    monkeypatch.setitem(sys.modules, "ray", None)
    assert not available("ray")
    with pytest.raises(FashionrecError, match=r"pip install 'fashionrec\[distributed\]'"):
        require("distributed")


def test_serve_without_the_extra_is_one_clear_line(monkeypatch, tmp_path, capsys):
    from fashionrec.cli import main

    monkeypatch.setitem(sys.modules, "fastapi", None)
    assert main(["serve", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "pip install 'fashionrec[serve]'" in err and "fastapi" in err


def test_explicit_ray_workers_without_ray(monkeypatch, tmp_path, capsys):
    from fashionrec.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(["recommend", "--data", str(tmp_path), "--out", str(tmp_path / "r.csv"), "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'fashionrec[distributed]'" in err and "Traceback" not in err


def test_embed_engine_ray_without_ray(monkeypatch, tiny_hm, tmp_path):
    from fashionrec.extras import MissingExtraError
    from fashionrec.workflows.recommend import embed_catalog_images

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingExtraError, match=r"fashionrec\[distributed\]"):
        embed_catalog_images(tiny_hm, engine="ray")


def test_workers_auto_falls_back_to_one_process_without_ray(monkeypatch, caplog):
    import fashionrec.recommend.batch as batch
    from fashionrec.workflows.recommend import local_if_no_ray

    monkeypatch.setattr(batch, "resolve_workers", lambda value, customers: 4 if customers >= 100_000 else 1)
    monkeypatch.setitem(sys.modules, "ray", None)
    with caplog.at_level("WARNING", logger="fashionrec"):
        assert local_if_no_ray("auto", 200_000) == 1
    assert "fashionrec[distributed]" in caplog.text
    assert local_if_no_ray("auto", 10) == "auto"  # one worker anyway: nothing to say
    assert local_if_no_ray(3, 200_000) == 3  # explicit counts are checked (and refused) before the data loads
    monkeypatch.delitem(sys.modules, "ray")
    monkeypatch.setattr("fashionrec.extras.available", lambda m: True)
    assert local_if_no_ray("auto", 200_000) == "auto"
