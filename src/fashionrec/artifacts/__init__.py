"""What fashionrec saves: arrays in an `.npz` plus a JSON header with a format version; never pickle.

After implicit (`np.savez` of factors and hyperparameters, loaded without `allow_pickle`):

    from fashionrec.artifacts import save_artifact, load_artifact, artifact_key

    save_artifact("state.npz", {"k": 50, "ids": ids}, {"vectors": V}, kind="server-state")  # atomic write
    config, arrays, kind, version = load_artifact("state.npz", kind="server-state")

- `save_artifact(path, config, arrays, kind=...)` / `load_artifact(path, kind=None)`: atomic write (temp name +
  rename); `config` is JSON (str keys; nan/inf allowed), `arrays` are numpy arrays (never object dtype). A missing
  file, a pickle (fashionrec before this format), a foreign file, another format version or another `kind` is an
  `ArtifactFormatError` (a FashionrecError) naming the file.
- `encode_state(obj, classes)` / `decode_state(tree, arrays, classes)`: a whole object (a fitted recommender) as
  (JSON tree, arrays): arrays, DataFrames, sparse matrices, LightGBM boosters, allowed sklearn/implicit estimators,
  objects of the classes in the caller's `classes` table; anything else is refused naming the attribute path.
- `artifact_key(**parts)`: one key for everything an artifact depends on (files by content, arrays by bytes,
  settings, the package version).
"""

from fashionrec.artifacts.keys import artifact_key, file_fingerprint, file_sha256, files_fingerprint
from fashionrec.artifacts.state import LIBRARY_CLASSES, StateEncodeError, decode_state, encode_state
from fashionrec.artifacts.store import Artifact, ArtifactFormatError, load_artifact, save_artifact

__all__ = [
    "Artifact",
    "ArtifactFormatError",
    "LIBRARY_CLASSES",
    "StateEncodeError",
    "artifact_key",
    "decode_state",
    "encode_state",
    "file_fingerprint",
    "file_sha256",
    "files_fingerprint",
    "load_artifact",
    "save_artifact",
]
