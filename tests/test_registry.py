"""Registries: base modules hold contract + table + factory and import no plug-in; the packages import the plug-ins
(timm's shape); a new plug-in registers without editing base; no import circles in backbones/, recommend/, index/,
training/, artifacts/."""

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fashionrec
from fashionrec.errors import FashionrecError

SRC = Path(fashionrec.__file__).parent
AREAS = ("backbones", "recommend", "index", "training", "artifacts")


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every fashionrec module imported anywhere in the file (module level and inside functions)."""
    out = set()
    pkg = _module_name(path) if path.name == "__init__.py" else _module_name(path).rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("fashionrec")}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                mod = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([mod] if mod else []))
            if not mod.startswith("fashionrec"):
                continue
            for a in node.names:  # `from pkg import module` (or subpackage) imports the module
                sub = f"{mod}.{a.name}"
                path = SRC.parent / Path(*sub.split("."))
                out.add(sub if path.with_suffix(".py").exists() or (path / "__init__.py").exists() else mod)
    return out


@pytest.mark.parametrize(
    "base, allowed",
    [
        ("backbones/base.py", {"fashionrec.errors", "fashionrec.artifacts.keys", "fashionrec.config"}),
        ("recommend/base.py", {"fashionrec.errors", "fashionrec.artifacts", "fashionrec.recommend.attributes"}),
        ("index/base.py", {"fashionrec.errors", "fashionrec.artifacts"}),
    ],
)
def test_registry_base_imports_no_plug_in(base, allowed):
    assert _imports(SRC / base) <= allowed


def test_no_import_circles_in_these_packages():
    files = [p for a in AREAS for p in (SRC / a).rglob("*.py")]
    graph = {_module_name(p): {m for m in _imports(p)} for p in files}
    cycles = []

    def visit(node, stack):
        if node in stack:
            cycles.append(stack[stack.index(node) :] + [node])
            return
        for nxt in graph.get(node, ()):
            if nxt in graph and len(cycles) < 5:
                visit(nxt, stack + [node])

    for start in graph:
        visit(start, [])
    assert not cycles, cycles


def test_index_and_artifacts_import_neither_torch_nor_timm():
    code = (
        "import sys, fashionrec.index, fashionrec.artifacts, fashionrec.evaluation.metrics; "
        "print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_public_factories_keep_working():
    from fashionrec.backbones import create_backbone, list_backbones
    from fashionrec.index import create_index, list_indexes
    from fashionrec.recommend import list_recommenders
    from fashionrec.recommend.base import create_recommender

    assert {"efficientnet_lite0", "mobilenetv2", "tiny_cnn"} <= set(list_backbones())
    assert create_backbone("tiny_cnn").embed_dim == 64
    assert create_backbone("resnet18", pretrained=False).embed_dim == 512  # any timm name: the fallback factory
    with pytest.raises(FashionrecError, match="unknown backbone 'no_such_net'"):
        create_backbone("no_such_net", pretrained=False)
    assert set(list_recommenders()) >= {
        "popularity",
        "repurchase",
        "itemknn",
        "als",
        "bpr",
        "content",
        "visual",
        "hybrid",
    }
    for name in list_recommenders():
        assert create_recommender(name).name == name  # every registered name builds with its defaults
    assert {"exact", "flat", "hnsw", "ivf", "pq"} <= set(list_indexes())
    assert create_index("auto", dim=4, n_items=10).kind == "exact"


def test_a_new_recommender_registers_and_saves_without_editing_base(tmp_path):
    import pandas as pd

    from fashionrec.recommend import base, create_recommender, load_recommender
    from fashionrec.recommend.base import RecData, Recommender, register_recommender

    @register_recommender("test-reverse-alpha")
    class ReverseAlpha(Recommender):
        def __init__(self, bonus: float = 1.0):
            super().__init__()
            self.bonus = bonus

        def fit(self, data):
            self.data = data
            self.order = np.argsort(np.argsort(data.item_ids))[::-1].astype(float)
            return self

        def scores(self, hist_idx, hist_ts, user=None):
            return self.order[: self.data.n_items] + self.bonus

    try:
        ev = pd.DataFrame({"user": ["u"], "item": ["a"], "timestamp": pd.to_datetime(["2020-01-01"]), "weight": 1.0})
        m = create_recommender("test-reverse-alpha", bonus=2.0).fit(RecData(ev, ["a", "b", "c"]))
        assert [r.item for r in m.recommend("u", 3)] == ["a", "b", "c"]
        back = load_recommender(m.save(tmp_path / "m.npz"))
        assert type(back) is ReverseAlpha and back.bonus == 2.0
        assert [r.item for r in back.recommend("u", 3)] == ["a", "b", "c"]
    finally:
        del base._REGISTRY["test-reverse-alpha"]
    with pytest.raises(FashionrecError, match="'test-reverse-alpha' is not registered"):
        load_recommender(tmp_path / "m.npz")  # classes come from the table: unregistered means not loadable


def test_adapted_model_folder_is_a_registered_backbone_source(tmp_path):
    from fashionrec.backbones import base

    assert any(matches is base.is_adapted_model_dir for matches, _ in base._SOURCES)
    assert not base.is_adapted_model_dir(tmp_path)  # an empty folder is not a model
