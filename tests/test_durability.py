"""A writer killed mid-way leaves the previous artifact intact (write to a temporary name, rename when complete)."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np

from fashionrec.features import FeatureCache
from fashionrec.index import create_index, load_index

CHILD = textwrap.dedent("""
    import sys, time, numpy as np
    import fashionrec.features.store as F
    from fashionrec.index import create_index
    kind, root = sys.argv[1], sys.argv[2]
    def slow_write(target, *a, **k):
        # the real artifact code path, stalled half way through writing its bytes
        with open(target, "wb") as f:
            f.write(b"PARTIAL" * 1000)
            f.flush()
            print("writing", flush=True)
            time.sleep(60)
    if kind == "features":
        F.np.savez = slow_write
        F.FeatureCache(root).save("key", features=np.ones((3, 4), np.float32))
    else:
        np.savez = slow_write  # saved indexes are artifacts: arrays in .npz (fashionrec.artifacts)
        idx = create_index("exact", dim=4)
        idx.add(["new"], np.ones((1, 4), np.float32))
        idx.save(root + "/items.idx")
""")


def _kill_mid_write(kind, root):
    p = subprocess.Popen([sys.executable, "-c", CHILD, kind, str(root)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    os.kill(p.pid, signal.SIGKILL)
    p.wait(10)
    assert p.returncode == -signal.SIGKILL


def test_killed_feature_writer_keeps_previous_cache(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.save("key", features=np.full((3, 4), 7, np.float32))
    _kill_mid_write("features", tmp_path)
    assert np.all(cache.load("key")["features"] == 7)


def test_killed_index_writer_keeps_previous_index(tmp_path):
    idx = create_index("exact", dim=4)
    idx.add(["old"], np.eye(4, dtype=np.float32)[:1])
    idx.save(tmp_path / "items.idx")
    _kill_mid_write("index", tmp_path)
    back = load_index(tmp_path / "items.idx")
    assert back.ids == ["old"]


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    import os
    import stat

    from fashionrec.io import write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o644  # readable by others, like open() makes
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temporary left behind
