"""A real uvicorn server in a background thread, on a free loopback port."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import uvicorn

TOKEN = "test-write-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(app):
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(10)


def make_shop(root, n_users: int = 24, seed: int = 0):
    """An H&M-layout folder: red tops and blue shoes (real JPEG files), customers who stick to one kind."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows, ids = [], []
    for j in range(30):
        red = j < 15
        aid = f"0{(100 if red else 200) + j:03d}000{j % 10:03d}"
        ids.append(aid)
        img = Image.new("RGB", (64, 96), (245, 245, 245))
        d = ImageDraw.Draw(img)
        color = (200 + int(rng.integers(0, 50)), 20, 30) if red else (20, 30, 200 + int(rng.integers(0, 50)))
        if red:
            d.rectangle([12, 10, 52, 60], fill=color)
        else:
            d.ellipse([8, 50, 56, 80], fill=color)
        img.save(root / "images" / f"{aid}.jpg", quality=90)
        rows.append(
            f"{aid},{aid[1:7]},{'red top' if red else 'blue shoe'} {j},{'Garment Upper body' if red else 'Shoes'},"
            f"{'Red' if red else 'Blue'},{'Top' if red else 'Sneakers'}"
        )
    (root / "articles.csv").write_text(
        "article_id,product_code,prod_name,product_group_name,colour_group_name,product_type_name\n"
        + "\n".join(rows)
        + "\n"
    )
    tx = ["t_dat,customer_id,article_id,price,sales_channel_id"]
    users = [f"cust{u:03d}" for u in range(n_users)]
    for u, cid in enumerate(users):
        group = ids[:15] if u % 2 == 0 else ids[15:]
        for n in range(6):
            tx.append(
                f"2020-0{1 + n % 6}-{10 + int(rng.integers(0, 15))},{cid},{group[int(rng.integers(0, 15))]},0.02,2"
            )
    (root / "transactions.csv").write_text("\n".join(tx) + "\n")
    (root / "customers.csv").write_text("customer_id\n" + "\n".join(users + ["newcust"]) + "\n")
    return root, ids, users
