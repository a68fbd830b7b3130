"""PNG reports: confusion matrices, label-efficiency curves, image grids, comparison bars."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fashionrec.io import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # headless machines; no display needed
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    plt = _plt()
    with atomic_path(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return Path(path)


def plot_confusion(cm: np.ndarray, classes: Sequence[str], path: str | Path, title: str = "Confusion matrix") -> Path:
    plt = _plt()
    n = len(classes)
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * n + 2), max(4, 0.5 * n + 1.5)))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        int(cm[i, j]),
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    ax.set_title(title)
    return _save(fig, path)


def label_efficiency_axis(table: dict[str, dict[str, tuple[float, float]]]) -> list[str]:
    """One shared, ordered x axis: methods measured at fewer k (fine-tuning stops at 100) keep their positions."""
    return sorted({k for row in table.values() for k in row}, key=lambda k: float("inf") if k == "all" else float(k))


def plot_label_efficiency(table: dict[str, dict[str, tuple[float, float]]], path: str | Path, title: str) -> Path:
    """table[method][k] = (mean, std); k labels are strings ('1', '5', ..., 'all')."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    all_ks = label_efficiency_axis(table)
    pos = {k: i for i, k in enumerate(all_ks)}
    for method, row in table.items():
        ks = sorted(row, key=pos.get)
        m = np.array([row[k][0] for k in ks])
        s = np.array([row[k][1] for k in ks])
        ax.errorbar([pos[k] for k in ks], m, yerr=s, marker="o", capsize=3, label=method)
    ax.set_xticks(range(len(all_ks)), all_ks)
    ax.set_xlabel("labelled examples per class")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    return _save(fig, path)


def image_grid(
    images: Sequence[np.ndarray],
    captions: Sequence[str],
    path: str | Path,
    *,
    cols: int = 8,
    colors: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    plt = _plt()
    rows = max(1, -(-len(images) // cols))
    lines = max([str(c).count("\n") + 1 for c in captions] or [1])  # multi-line captions need room above each row
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * (1.9 + 0.15 * (lines - 1))))
    if lines > 1:
        fig.subplots_adjust(hspace=0.25 + 0.12 * lines)
    axes = np.atleast_1d(axes).ravel()
    for ax in axes:
        ax.axis("off")
    for i, (img, cap) in enumerate(zip(images, captions)):
        axes[i].imshow(img, cmap="gray" if np.asarray(img).ndim == 2 else None)
        axes[i].set_title(cap, fontsize=7, color=(colors[i] if colors else "black"))
    if title:
        top = max(ax.get_position().y1 for ax in axes)
        fig.suptitle(title, y=top + 0.04 * lines / rows + 0.02, va="bottom")
    return _save(fig, path)


def plot_bars(
    names: Sequence[str],
    values: Sequence[float],
    errors: Sequence[tuple[float, float]] | None,
    path: str | Path,
    *,
    ylabel: str,
    title: str,
) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(names) + 2), 4))
    xs = np.arange(len(names))
    yerr = None
    if errors is not None:
        yerr = np.array(
            [[v - lo for v, (lo, hi) in zip(values, errors)], [hi - v for v, (lo, hi) in zip(values, errors)]]
        )
        yerr = np.clip(yerr, 0, None)
    ax.bar(xs, values, yerr=yerr, capsize=3, color="#4c72b0")
    ax.set_xticks(xs, names, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_taste(df, path: str | Path) -> Path:
    """Two panels from an evaluation table (`evaluation.protocol`): new-item taste AUC per model (chance 0.5) and
    colour pick top-1 (chance and popularity drawn as lines), each with its 95% interval."""
    plt = _plt()
    names = list(df.index)
    xs = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(max(9, 1.2 * len(names) + 4), 4))
    for ax, key, title, lines in (
        (axes[0], "taste_auc", "new-item taste AUC", [(0.5, "chance")]),
        (
            axes[1],
            "taste_pick",
            "colour pick top-1",
            [(df.attrs.get("pick_chance", np.nan), "chance"), (df.attrs.get("pick_popularity", np.nan), "popularity")],
        ),
    ):
        vals = np.array([float(df.loc[n, key]) for n in names])
        cis = [df.loc[n, f"{key}_ci"] for n in names]
        err = np.clip(np.array([[v - c[0] for v, c in zip(vals, cis)], [c[1] - v for v, c in zip(vals, cis)]]), 0, None)
        ax.bar(xs, vals, yerr=err, capsize=3, color="#4c72b0")
        for y, label in lines:
            if y == y:
                ax.axhline(y, ls="--", lw=1, color="#c44e52" if label == "chance" else "#55a868", label=label)
        ax.set_xticks(xs, names, rotation=30, ha="right")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="lower right")
        lo = np.nanmin([c[0] for c in cis] + [y for y, _ in lines if y == y])
        ax.set_ylim(max(0.0, lo - 0.05), None)
    fig.tight_layout()
    return _save(fig, path)
