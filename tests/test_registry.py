"""Registries: base modules hold contract + table + factory and import no plug-in; the packages import the plug-ins
(timm's shape); a new plug-in registers without editing base; no import circle anywhere in src/fashionrec."""

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fashionrec
from fashionrec.errors import FashionrecError

SRC = Path(fashionrec.__file__).parent


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The modules of `modules` that the file imports anywhere (module level and inside functions), absolute or
    relative; `from pkg import name` counts as `pkg.name` when that is a module, else as `pkg`."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def known(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {known(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            out |= {known(f"{base}.{a.name}") if f"{base}.{a.name}" in modules else known(base) for a in node.names}
    return out - {None, name}


def import_graph(root: Path, package: str = "fashionrec") -> dict[str, set[str]]:
    """module -> the package's modules it imports, for every .py file under root/package."""
    files = {_module_name(p, root): p for p in (root / package).rglob("*.py")}
    return {m: _module_imports(p, m, set(files)) for m, p in files.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every group of modules that import each other, directly or through others (strongly connected components
    of two or more modules, and modules that import themselves), each sorted."""
    import networkx as nx

    g = nx.DiGraph([(a, b) for a, targets in graph.items() for b in targets])
    return sorted(sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1 or g.has_edge(*c, *c))


def _imports(path: Path) -> set[str]:
    """Every fashionrec module imported anywhere in the file (module level and inside functions)."""
    modules = set(import_graph(SRC.parent))
    return _module_imports(path, _module_name(path, SRC.parent), modules)


@pytest.mark.parametrize(
    "base, allowed",
    [
        ("backbones/base.py", {"fashionrec.errors", "fashionrec.artifacts.keys", "fashionrec.config"}),
        ("recommend/base.py", {"fashionrec.errors", "fashionrec.artifacts", "fashionrec.recommend.attributes"}),
        (
            "index/base.py",
            {"fashionrec.errors", "fashionrec.artifacts", "fashionrec.index.knn"},
        ),  # knn: a helper, no backend
    ],
)
def test_registry_base_imports_no_plug_in(base, allowed):
    assert _imports(SRC / base) <= allowed


def test_the_cycle_finder_on_known_graphs():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": {"a"}, "x": {"y"}, "y": {"x"}}) == [["a", "b"], ["x", "y"]]


def test_the_import_graph_sees_function_level_relative_and_from_imports(tmp_path):
    """A planted circle the old five-package scan missed: through a function-level import, a relative import and
    `from pkg import module`, across packages."""
    pkg = tmp_path / "fashionrec"
    for sub in ("", "recommend", "recommend/batch"):
        (pkg / sub).mkdir(exist_ok=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "distributed.py").write_text("def run():\n    from fashionrec.recommend.batch import job\n")
    (pkg / "recommend/batch/job.py").write_text("from .rows import write\n")
    (pkg / "recommend/batch/rows.py").write_text("import numpy\n\ndef write():\n    from ... import distributed\n")
    graph = import_graph(tmp_path)
    assert graph["fashionrec.distributed"] == {"fashionrec.recommend.batch.job"}
    assert graph["fashionrec.recommend.batch.job"] == {"fashionrec.recommend.batch.rows"}
    assert graph["fashionrec.recommend.batch.rows"] == {"fashionrec.distributed"}
    assert import_cycles(graph) == [
        ["fashionrec.distributed", "fashionrec.recommend.batch.job", "fashionrec.recommend.batch.rows"]
    ]
    (pkg / "recommend/batch/rows.py").write_text("import numpy\n")
    assert import_cycles(import_graph(tmp_path)) == []


def test_no_import_circle_anywhere_in_the_package():
    graph = import_graph(SRC.parent)
    assert len(graph) == len(list(SRC.rglob("*.py")))  # every module of src/fashionrec, not a few packages
    assert import_cycles(graph) == []


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


def test_capabilities_are_class_attributes_read_through_the_registry():
    from fashionrec.recommend import Recommender, names, recommender_class
    from fashionrec.recommend.base import _REGISTRY, register_recommender
    from fashionrec.serving.build import LIGHT_MODELS
    from fashionrec.workflows.recommend import evaluation_needs_images

    assert set(names(needs_images=True)) == {"visual", "hybrid", "taste", "vbpr", "amr"}
    assert names(light=True) == ["popularity", "repurchase", "visual"] == list(LIGHT_MODELS)
    assert not evaluation_needs_images("repurchase") and evaluation_needs_images("content")
    assert names(lambda c: c.needs_images and c.light) == ["visual"]

    @register_recommender("test-photo-only")
    class PhotoOnly(Recommender):  # a plug-in declares what it needs; nothing else is edited
        needs_images = True

        def fit(self, data):
            return self

        def scores(self, hist_idx, hist_ts, user=None):
            return np.zeros(0)

    try:
        assert "test-photo-only" in names(needs_images=True) and "test-photo-only" not in names(light=True)
        assert recommender_class("test-photo-only") is PhotoOnly
    finally:
        del _REGISTRY["test-photo-only"]
    with pytest.raises(FashionrecError, match="unknown recommender 'nope'"):
        recommender_class("nope")
