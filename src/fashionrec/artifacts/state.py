"""Save a Python object's state as data: a JSON tree plus named numpy arrays, never pickle.

`encode_state(obj, classes)` walks the object's attributes and returns `(tree, arrays)`; `decode_state(tree, arrays,
classes)` rebuilds it. Both go through `save_artifact` / `load_artifact` (artifacts/store.py).

What is encoded (anything else is refused with an error naming the attribute path, e.g. `hybrid.state.pairs`):
- None, bool, int, float (nan/inf too), str; list, tuple, set, dict (any encodable keys);
- numpy arrays (object arrays only when every element is a str / None / nan), numpy scalars and dtypes;
- pandas Timestamp / Timedelta / NaT, DataFrame, Series, Index (numpy, str/object-of-str and category columns);
- scipy.sparse CSR / CSC / COO (data, indices, indptr, shape, as implicit saves its item-kNN);
- LightGBM Boosters (`model_to_string()`), and fitted estimators of the library classes in `LIBRARY_CLASSES`
  (scikit-learn, implicit) through their own `__getstate__` / `__setstate__` with the same walker;
- objects of the classes in `classes` (a name -> class table the caller owns: for recommenders, the registry).

Classes are looked up by their table name: the file never names a module to import. Objects reached twice
(the same `RecData` held by a model and by its state) are stored once and come back shared.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fashionrec.errors import FashionrecError

# Library classes whose fitted state is plain attributes (arrays, numbers, nested estimators). Name -> (module, class):
# the module comes from this table, never from the file.
LIBRARY_CLASSES: dict[str, tuple[str, str]] = {
    "sklearn.LogisticRegression": ("sklearn.linear_model", "LogisticRegression"),
    "sklearn.StandardScaler": ("sklearn.preprocessing", "StandardScaler"),
    "sklearn.OneHotEncoder": ("sklearn.preprocessing", "OneHotEncoder"),
    "sklearn.TfidfVectorizer": ("sklearn.feature_extraction.text", "TfidfVectorizer"),
    "sklearn.TfidfTransformer": ("sklearn.feature_extraction.text", "TfidfTransformer"),
    "sklearn.TruncatedSVD": ("sklearn.decomposition", "TruncatedSVD"),
    "sklearn.Pipeline": ("sklearn.pipeline", "Pipeline"),
    "implicit.AlternatingLeastSquares": ("implicit.cpu.als", "AlternatingLeastSquares"),
    "implicit.BayesianPersonalizedRanking": ("implicit.cpu.bpr", "BayesianPersonalizedRanking"),
    "implicit.CosineRecommender": ("implicit.nearest_neighbours", "CosineRecommender"),
    "implicit.BM25Recommender": ("implicit.nearest_neighbours", "BM25Recommender"),
    "implicit.TFIDFRecommender": ("implicit.nearest_neighbours", "TFIDFRecommender"),
    "implicit.ItemItemRecommender": ("implicit.nearest_neighbours", "ItemItemRecommender"),
}


class StateEncodeError(FashionrecError, TypeError):
    """An attribute holds something that cannot be saved as data; the message names its path."""


def _library_class(name: str) -> type:
    module, cls = LIBRARY_CLASSES[name]
    return getattr(importlib.import_module(module), cls)


def _library_name(cls: type) -> str | None:
    for name, (module, clsname) in LIBRARY_CLASSES.items():
        if cls.__name__ == clsname and cls.__module__.split(".")[0] == module.split(".")[0]:
            try:
                if _library_class(name) is cls:
                    return name
            except (ImportError, AttributeError):
                continue
    return None


def _object_state(obj: Any, path: str) -> dict:
    if hasattr(type(obj), "__slots__") and not hasattr(obj, "__dict__"):
        raise StateEncodeError(f"{path}: {type(obj).__name__} uses __slots__; cannot be saved as data")
    state = obj.__getstate__() if hasattr(obj, "__getstate__") else obj.__dict__
    if state is None:
        return {}
    if not isinstance(state, dict):
        raise StateEncodeError(f"{path}: {type(obj).__name__}.__getstate__ returned a {type(state).__name__}")
    return state


class _Encoder:
    def __init__(self, classes: Mapping[str, type]):
        self.by_class = {cls: name for name, cls in classes.items()}
        self.arrays: dict[str, np.ndarray] = {}
        self.memo: dict[int, int] = {}
        self.keep: list = []  # keeps encoded objects alive so their id() is not reused mid-walk

    def array(self, a: np.ndarray, path: str) -> dict:
        if a.dtype.hasobject:
            return self.object_array(a, path)
        if a.dtype.kind == "V":
            raise StateEncodeError(f"{path}: structured array (dtype {a.dtype}) is not supported")
        key = f"a{len(self.arrays)}"
        self.arrays[key] = a if a.flags.c_contiguous else a.copy(order="C")  # (ascontiguousarray makes 0-d 1-d)
        return {"$": "nd", "k": key}

    def object_array(self, a: np.ndarray, path: str) -> dict:
        """Object arrays of str with missing values (None / nan / pd.NA): a unicode array plus a null code array."""
        import pandas as pd

        flat = a.ravel()
        nulls = np.zeros(len(flat), dtype=np.int8)
        text = []
        for j, v in enumerate(flat):
            if isinstance(v, str):
                text.append(v)
                continue
            if v is None:
                nulls[j] = 1
            elif isinstance(v, float) and math.isnan(v):
                nulls[j] = 2
            elif v is pd.NA:
                nulls[j] = 3
            else:
                raise StateEncodeError(
                    f"{path}: object array holds a {type(v).__name__} ({v!r:.40}); only str and "
                    "missing values can be saved"
                )
            text.append("")
        # UTF-8 bytes + lengths: a fixed-width unicode array would take 4 bytes x the longest string for every item
        # (24 MB instead of a few for the H&M article descriptions).
        raw = [t.encode("utf-8", "surrogatepass") for t in text]
        out = {
            "$": "obj_nd",
            "shape": list(a.shape),
            "utf8": self.array(np.frombuffer(b"".join(raw), dtype=np.uint8), path),
            "lengths": self.array(np.fromiter(map(len, raw), dtype=np.int64, count=len(raw)), path),
        }
        if nulls.any():
            out["nulls"] = self.array(nulls, path)
        return out

    def enc(self, x: Any, path: str) -> Any:
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, int) and type(x) is int:
            return x
        if isinstance(x, float) and type(x) is float:
            return x if math.isfinite(x) else {"$": "float", "v": repr(x)}
        if isinstance(x, np.generic):
            if x.dtype.kind in "biuf":
                return {"$": "npv", "dt": x.dtype.str, "v": self.enc(x.item(), path)}
            return {"$": "np0", "a": self.array(np.asarray(x), path)}
        if isinstance(x, np.dtype):
            return {"$": "dtype", "v": x.str}
        if isinstance(x, type) and issubclass(x, np.generic):
            return {"$": "nptype", "v": np.dtype(x).str}
        if isinstance(x, list):
            return [self.enc(v, f"{path}[{j}]") for j, v in enumerate(x)]
        if isinstance(x, tuple):
            return {"$": "tuple", "v": [self.enc(v, f"{path}[{j}]") for j, v in enumerate(x)]}
        if isinstance(x, (set, frozenset)):
            items = sorted(x, key=repr)
            return {"$": "set" if isinstance(x, set) else "frozenset", "v": [self.enc(v, f"{path}{{}}") for v in items]}
        if isinstance(x, dict) and type(x) is dict:
            if all(type(k) is str for k in x):
                return {"$": "dict", "v": {k: self.enc(v, f"{path}.{k}") for k, v in x.items()}}
            return {
                "$": "dictp",
                "v": [[self.enc(k, f"{path}<key>"), self.enc(v, f"{path}[{k!r}]")] for k, v in x.items()],
            }
        if isinstance(x, Path):
            return {"$": "path", "v": str(x)}
        # --- things that may be shared: stored once, referenced after
        ref = self.memo.get(id(x))
        if ref is not None:
            return {"$": "ref", "id": ref}
        node_id = len(self.memo)
        self.memo[id(x)] = node_id
        self.keep.append(x)
        node = self.shared(x, path)
        node["id"] = node_id
        return node

    def shared(self, x: Any, path: str) -> dict:
        import pandas as pd
        import scipy.sparse as sp

        if isinstance(x, np.ndarray):
            return self.array(x, path)
        if x is pd.NaT:
            return {"$": "nat"}
        if isinstance(x, pd.Timestamp):
            return {"$": "ts", "v": int(x.value), "unit": x.unit, "tz": None if x.tz is None else str(x.tz)}
        if isinstance(x, pd.Timedelta):
            return {"$": "td", "v": int(x.value)}
        if isinstance(x, pd.DataFrame):
            return {
                "$": "df",
                "columns": self.index(x.columns, f"{path}.columns"),
                "index": self.index(x.index, f"{path}.index"),
                "data": [self.values(x.iloc[:, j], f"{path}[{c!r}]") for j, c in enumerate(x.columns)],
            }
        if isinstance(x, pd.Series):
            return {
                "$": "series",
                "name": self.enc(x.name, f"{path}.name"),
                "index": self.index(x.index, f"{path}.index"),
                "data": self.values(x, path),
            }
        if isinstance(x, pd.Index):
            return self.index(x, path)
        if sp.issparse(x):
            fmt = x.format
            kind = "array" if isinstance(x, sp.sparray) else "matrix"
            if fmt in ("csr", "csc"):
                return {
                    "$": "sparse",
                    "fmt": fmt,
                    "kind": kind,
                    "shape": list(x.shape),
                    "data": self.array(x.data, path),
                    "indices": self.array(x.indices, path),
                    "indptr": self.array(x.indptr, path),
                }
            if fmt == "coo":
                return {
                    "$": "sparse",
                    "fmt": fmt,
                    "kind": kind,
                    "shape": list(x.shape),
                    "data": self.array(x.data, path),
                    "row": self.array(x.row, path),
                    "col": self.array(x.col, path),
                }
            raise StateEncodeError(f"{path}: scipy.sparse {fmt} matrix; convert it to CSR before saving")
        cls = type(x)
        if cls.__module__.startswith("lightgbm") and cls.__name__ == "Booster":
            return {"$": "lgb", "model": x.model_to_string()}
        if cls in self.by_class:
            return {"$": "obj", "cls": self.by_class[cls], "state": self.enc_state(x, path)}
        lib = _library_name(cls)
        if lib is not None:
            return {"$": "lib", "cls": lib, "state": self.enc_state(x, path)}
        raise StateEncodeError(
            f"{path}: cannot save a {cls.__module__}.{cls.__qualname__} as data (no pickle); "
            "store its arrays/parameters instead, or register the class"
        )

    def enc_state(self, x: Any, path: str) -> dict:
        state = _object_state(x, path)
        bad = [k for k in state if type(k) is not str]
        if bad:
            raise StateEncodeError(f"{path}: attribute names must be str, got {bad[:3]}")
        return {k: self.enc(v, f"{path}.{k}") for k, v in state.items()}

    def values(self, s, path: str) -> dict:
        """A Series' or Index's values with their dtype."""
        import pandas as pd

        dt = s.dtype
        if isinstance(dt, pd.CategoricalDtype):
            cat = s.array if isinstance(s, pd.Series) else s.values
            return {
                "$": "cat",
                "codes": self.array(np.asarray(cat.codes), path),
                "categories": self.index(cat.categories, f"{path}.categories"),
                "ordered": bool(cat.ordered),
            }
        if isinstance(dt, np.dtype) and not dt.hasobject:
            return {"$": "vals", "a": self.array(np.asarray(s), path)}
        if isinstance(dt, pd.StringDtype) or (isinstance(dt, np.dtype) and dt.hasobject):
            out = {"$": "vals", "a": self.object_array(np.asarray(s, dtype=object), path)}
            if isinstance(dt, pd.StringDtype):
                out["pd"] = {"storage": dt.storage, "na": "nan" if dt.na_value is not pd.NA else "NA"}
            else:
                out["object"] = True  # kept as object (pandas would otherwise infer its str dtype)
            return out
        raise StateEncodeError(f"{path}: pandas dtype {dt} is not supported (numpy, str, object-of-str or category)")

    def index(self, ix, path: str) -> dict:
        import pandas as pd

        if isinstance(ix, pd.MultiIndex):
            raise StateEncodeError(f"{path}: MultiIndex is not supported")
        name = self.enc(ix.name, f"{path}.name")
        if isinstance(ix, pd.RangeIndex):
            return {"$": "range", "start": ix.start, "stop": ix.stop, "step": ix.step, "name": name}
        return {"$": "index", "name": name, "data": self.values(ix, path)}


class _Decoder:
    def __init__(self, arrays: Mapping[str, np.ndarray], classes: Mapping[str, type]):
        self.arrays, self.classes, self.memo = arrays, classes, {}

    def array(self, node: dict) -> np.ndarray:
        if node.get("$") == "obj_nd":
            buf = self.arrays[node["utf8"]["k"]].tobytes()
            ends = np.cumsum(self.arrays[node["lengths"]["k"]]).tolist()
            starts = [0] + ends[:-1]
            out = np.empty(len(ends), dtype=object)
            out[:] = [buf[s:e].decode("utf-8", "surrogatepass") for s, e in zip(starts, ends)]
            out = out.reshape(node["shape"])
            if "nulls" in node:
                nulls = self.arrays[node["nulls"]["k"]].reshape(node["shape"])
                import pandas as pd

                for code, val in ((1, None), (2, np.nan), (3, pd.NA)):
                    out[nulls == code] = val
            return out
        return self.arrays[node["k"]]

    def dec(self, x: Any) -> Any:
        if not isinstance(x, (dict, list)):
            return x
        if isinstance(x, list):
            return [self.dec(v) for v in x]
        tag = x["$"]
        if tag == "float":
            return float(x["v"])
        if tag == "npv":
            return np.dtype(x["dt"]).type(self.dec(x["v"]))
        if tag == "np0":
            return self.array(x["a"])[()]
        if tag == "dtype":
            return np.dtype(x["v"])
        if tag == "nptype":
            return np.dtype(x["v"]).type
        if tag == "tuple":
            return tuple(self.dec(v) for v in x["v"])
        if tag in ("set", "frozenset"):
            items = (self.dec(v) for v in x["v"])
            return set(items) if tag == "set" else frozenset(items)
        if tag == "dict":
            return {k: self.dec(v) for k, v in x["v"].items()}
        if tag == "dictp":
            return {self.dec(k): self.dec(v) for k, v in x["v"]}
        if tag == "path":
            return Path(x["v"])
        if tag == "ref":
            return self.memo[x["id"]]
        return self.shared(x)

    def shared(self, x: dict) -> Any:
        import pandas as pd
        import scipy.sparse as sp

        tag, node_id = x["$"], x.get("id")
        if tag in ("obj", "lib"):  # registered before its state is decoded: cycles come back as the same object
            if tag == "obj":
                if x["cls"] not in self.classes:
                    raise FashionrecError(f"saved state names class '{x['cls']}', which this fashionrec does not know")
                cls = self.classes[x["cls"]]
            else:
                if x["cls"] not in LIBRARY_CLASSES:
                    raise FashionrecError(f"saved state names library class '{x['cls']}', which is not allowed")
                cls = _library_class(x["cls"])
            obj = cls.__new__(cls)
            self.memo[node_id] = obj
            state = {k: self.dec(v) for k, v in x["state"].items()}
            if hasattr(obj, "__setstate__") and type(obj).__setstate__ is not getattr(object, "__setstate__", None):
                obj.__setstate__(state)
            else:
                obj.__dict__.update(state)
            return obj
        if tag in ("nd", "obj_nd"):
            out = self.array(x)
        elif tag == "nat":
            out = pd.NaT
        elif tag == "ts":
            out = pd.Timestamp(x["v"], tz="UTC").tz_convert(x["tz"]) if x["tz"] else pd.Timestamp(x["v"])
            if x.get("unit") and out.unit != x["unit"]:
                out = out.as_unit(x["unit"])
        elif tag == "td":
            out = pd.Timedelta(x["v"])
        elif tag == "df":
            cols = self.index(x["columns"])
            idx = self.index(x["index"])
            out = pd.DataFrame({j: self.column(v, idx) for j, v in enumerate(x["data"])}, index=idx)
            out.columns = cols
        elif tag == "series":
            idx = self.index(x["index"])
            out = self.column(x["data"], idx).rename(self.dec(x["name"]))
        elif tag in ("index", "range"):
            out = self.index(x)
        elif tag == "sparse":
            shape = tuple(x["shape"])
            if x["fmt"] == "coo":
                args = ((self.array(x["data"]), (self.array(x["row"]), self.array(x["col"]))),)
            else:
                args = ((self.array(x["data"]), self.array(x["indices"]), self.array(x["indptr"])),)
            cls = getattr(sp, f"{x['fmt']}_{x['kind']}")
            out = cls(*args, shape=shape)
        elif tag == "lgb":
            import lightgbm as lgb

            out = lgb.Booster(model_str=x["model"])
        else:
            raise FashionrecError(f"saved state has an unknown node type '{tag}' (written by a newer fashionrec?)")
        if node_id is not None:
            self.memo[node_id] = out
        return out

    def column(self, node: dict, index):
        import pandas as pd

        return pd.Series(self.values(node), index=index, dtype=object if node.get("object") else None, copy=False)

    def values(self, node: dict):
        import pandas as pd

        if node["$"] == "cat":
            return pd.Categorical.from_codes(
                self.array(node["codes"]), categories=self.index(node["categories"]), ordered=node["ordered"]
            )
        a = self.array(node["a"])
        if "pd" in node:
            na = np.nan if node["pd"]["na"] == "nan" else pd.NA
            return pd.array(a, dtype=pd.StringDtype(node["pd"]["storage"], na_value=na))
        return a

    def index(self, node: dict):
        import pandas as pd

        name = self.dec(node["name"])
        if node["$"] == "range":
            return pd.RangeIndex(node["start"], node["stop"], node["step"], name=name)
        vals = self.values(node["data"])
        if node["data"].get("object"):
            return pd.Index(vals, name=name, dtype=object)
        return pd.Index(vals, name=name, dtype=vals.dtype if isinstance(vals, np.ndarray) else None)


def encode_state(obj: Any, classes: Mapping[str, type] | None = None, *, root: str = "obj") -> tuple[Any, dict]:
    """(JSON tree, arrays) for `obj`. `classes` maps table names to the classes allowed as whole objects."""
    enc = _Encoder(classes or {})
    return enc.enc(obj, root), enc.arrays


def decode_state(tree: Any, arrays: Mapping[str, np.ndarray], classes: Mapping[str, type] | None = None) -> Any:
    """Rebuild what `encode_state` saved; classes are taken from `classes` by name only."""
    return _Decoder(arrays, classes or {}).dec(tree)
