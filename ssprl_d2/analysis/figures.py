"""Matplotlib figures of the analysis report (Agg, no display, no pyplot global state)."""
from typing import List, Optional, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure
from matplotlib.offsetbox import AnnotationBbox, OffsetImage

from ..atomic import atomic_write
from .curves import COLLAPSE_EFFECTIVE, collapse_spans, curve_groups, series

__all__ = [
    "color_for_match",
    "curves_figure",
    "heatmaps_figure",
    "image_grid_figure",
    "label_text",
    "mosaic",
    "save_figure",
    "scale_color",
    "shares_label",
    "tsne_figure",
    "usage_figure",
]

_SCALE_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


def scale_color(s: int) -> str:
    """The colour of pyramid scale s in every figure."""
    return _SCALE_COLORS[s % len(_SCALE_COLORS)]


def save_figure(fig: Figure, path: str, dpi: int = 100) -> str:
    """Write a figure as PNG (atomically: never half a file) and return the path."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight",
                                             facecolor="white"))  # fmt: skip
    return path


def mosaic(rows: Sequence[Sequence[Optional[np.ndarray]]], thumb: int, pad: int = 2) -> np.ndarray:
    """Tile thumbnails into one image; rows may differ in length, None leaves a blank cell.

    Args:
        rows: rows of (thumb, thumb, 3) uint8 arrays.
        thumb: side of every thumbnail.
        pad: white pixels between cells.

    Returns:
        (H, W, 3) uint8.
    """
    cols = max((len(r) for r in rows), default=1) or 1
    step = thumb + pad
    out = np.full((len(rows) * step + pad, cols * step + pad, 3), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            if im is not None:
                y, x = pad + i * step, pad + j * step
                out[y : y + thumb, x : x + thumb] = im
    return out


def image_grid_figure(
    rows: Sequence[Sequence[Optional[np.ndarray]]],
    row_labels: Sequence[str],
    title: str,
    captions: Optional[Sequence[Sequence[str]]] = None,
    frames: Optional[Sequence[Sequence[Optional[str]]]] = None,
    cell_inches: float = 0.75,
) -> Figure:
    """Rows of thumbnails drawn as one image, a label per row, optional caption per cell.

    Args:
        rows: rows of equal-sized uint8 thumbnails.
        row_labels: one label per row.
        title: figure title.
        captions: optional text under-laid at the bottom of each cell.
        frames: optional colour of a frame around each cell (None: no frame).
        cell_inches: drawn size of one cell.
    """
    thumb = next(im.shape[0] for r in rows for im in r if im is not None)
    pad = 2
    image = mosaic(rows, thumb, pad)
    ncols = max(len(r) for r in rows)
    fig = Figure(figsize=(1.6 + cell_inches * ncols, 0.5 + cell_inches * len(rows)))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(image, interpolation="nearest")
    step = thumb + pad
    ax.set_yticks([pad + i * step + thumb / 2 for i in range(len(rows))])
    ax.set_yticklabels(row_labels, fontsize=8)
    ax.set_xticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.tick_params(length=0)
    ax.set_title(title, fontsize=10)
    for i, row in enumerate(rows):
        for j in range(len(row)):
            x0, y0 = pad + j * step, pad + i * step
            if captions is not None and j < len(captions[i]) and captions[i][j]:
                ax.text(x0 + 1, y0 + thumb - 2, captions[i][j], fontsize=5.5, color="white",
                        va="bottom", ha="left",
                        bbox={"facecolor": "black", "alpha": 0.55, "pad": 0.8, "lw": 0})
            color = frames[i][j] if frames is not None and j < len(frames[i]) else None
            if color:
                ax.add_patch(_rect(x0 - 0.5, y0 - 0.5, thumb, color))
    return fig


def _rect(x: float, y: float, side: float, color: str):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), side, side, fill=False, edgecolor=color, linewidth=2.0)


def tsne_figure(
    proto_xy: Sequence[np.ndarray],
    emb_xy: Sequence[np.ndarray],
    proto_thumbs: Sequence[Sequence[Optional[np.ndarray]]],
    scale_names: Sequence[str],
) -> Figure:
    """The paper's Figure 2: prototypes of every scale in one t-SNE layout.

    Left: all scales, prototypes as large markers and assigned embeddings as dots, coloured by
    scale. Then one panel per scale: its embeddings and, at each prototype, the patch with the
    highest probability for it (prototypes nothing is assigned to are hollow markers).

    Args:
        proto_xy: per scale (K_s, 2).
        emb_xy: per scale (P_s, 2).
        proto_thumbs: per scale, per prototype a thumbnail or None.
        scale_names: per scale a label.
    """
    n = len(proto_xy)
    fig = Figure(figsize=(4.2 * (n + 1), 4.4))
    ax = fig.add_subplot(1, n + 1, 1)
    for s in range(n):
        c = scale_color(s)
        ax.scatter(emb_xy[s][:, 0], emb_xy[s][:, 1], s=4, color=c, alpha=0.25, lw=0)
        ax.scatter(proto_xy[s][:, 0], proto_xy[s][:, 1], s=60, marker="*", color=c,
                   edgecolor="black", lw=0.5, label=f"{scale_names[s]} prototypes")
    ax.legend(fontsize=7, loc="best")
    ax.set_title("all scales (dots: embeddings)", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    for s in range(n):
        ax = fig.add_subplot(1, n + 1, s + 2)
        c = scale_color(s)
        ax.scatter(emb_xy[s][:, 0], emb_xy[s][:, 1], s=4, color=c, alpha=0.3, lw=0)
        for k, (x, y) in enumerate(proto_xy[s]):
            im = proto_thumbs[s][k]
            if im is None:
                ax.scatter([x], [y], s=40, marker="o", facecolor="none", edgecolor=c, lw=1)
                continue
            box = AnnotationBbox(OffsetImage(im, zoom=0.42), (x, y), frameon=True, pad=0.1,
                                 bboxprops={"edgecolor": c, "lw": 1.2})
            ax.add_artist(box)
        xy = np.concatenate([emb_xy[s], proto_xy[s]])
        margin = 0.08 * (xy.max(axis=0) - xy.min(axis=0) + 1e-6)
        ax.set_xlim(xy[:, 0].min() - margin[0], xy[:, 0].max() + margin[0])
        ax.set_ylim(xy[:, 1].min() - margin[1], xy[:, 1].max() + margin[1])
        ax.set_title(f"{scale_names[s]}: top patch of each prototype", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def usage_figure(usages: Sequence[np.ndarray], scale_names: Sequence[str]) -> Figure:
    """Per scale, the share of rows assigned to each prototype, sorted (dead prototypes at 0)."""
    n = len(usages)
    fig = Figure(figsize=(3.6 * n, 2.6))
    for s, counts in enumerate(usages):
        ax = fig.add_subplot(1, n, s + 1)
        share = np.sort(counts)[::-1] / max(1, counts.sum())
        ax.bar(np.arange(len(share)), share, color=scale_color(s), width=0.9)
        ax.axhline(1.0 / len(share), color="gray", lw=0.8, ls="--")
        used = int((counts > 0).sum())
        ax.set_title(f"{scale_names[s]}: {used}/{len(counts)} prototypes used", fontsize=9)
        ax.set_xlabel("prototype (sorted by use)", fontsize=8)
        ax.set_ylabel("share of assignments", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def heatmaps_figure(
    panels: Sequence[Tuple[str, np.ndarray]],
    xlabel: str,
    ylabel: str,
    marks: Optional[Sequence[Sequence[Tuple[int, int]]]] = None,
) -> Figure:
    """Matrices side by side (the paper's Figure 3 as heatmaps), optional marked cells.

    Args:
        panels: (title, (rows, cols) matrix).
        xlabel, ylabel: axis labels.
        marks: per panel, (row, col) cells to outline.
    """
    n = len(panels)
    fig = Figure(figsize=(4.3 * n, 4.0))
    for i, (title, m) in enumerate(panels):
        ax = fig.add_subplot(1, n, i + 1)
        im = ax.imshow(m, aspect="auto", cmap="viridis", interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        for r, c in (marks[i] if marks else []):
            ax.add_patch(_rect_xy(c - 0.5, r - 0.5))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def _rect_xy(x: float, y: float):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), 1, 1, fill=False, edgecolor="red", linewidth=1.5)


def curves_figure(records: List[dict], threshold: float) -> Optional[Figure]:
    """Losses, prediction entropy / ln K, code usage and learning rate against iteration.

    Panels exist only for the keys present; shaded spans mark where a scale's entropy sits at
    or above ``threshold`` (collapse onto ln K).

    Returns:
        the figure, or None when the records hold none of these keys.
    """
    groups = curve_groups(records)
    titles = {"loss": "loss terms", "entropy": "prediction entropy / ln K",
              "usage": "code usage, effective prototypes (dotted), / K", "lr": "learning rate"}
    present = [g for g in ("loss", "entropy", "usage", "lr") if groups[g]]
    if not present:
        return None
    fig = Figure(figsize=(4.0 * len(present), 3.0))
    for i, g in enumerate(present):
        ax = fig.add_subplot(1, len(present), i + 1)
        for key in groups[g]:
            its, vals = series(records, key)
            ax.plot(its, vals, lw=1.2, color=_key_color(key), ls=_key_style(key),
                    marker="o" if len(its) < 30 else None, ms=2.5,
                    label=key.replace("ssprl/", ""))
            if g == "entropy":
                for a, b in collapse_spans(its, vals, threshold):
                    ax.axvspan(a, max(b, a + 1), color=_key_color(key), alpha=0.12)
            if "effective_prototypes" in key:
                for a, b in collapse_spans(its, vals, COLLAPSE_EFFECTIVE, below=True):
                    ax.axvspan(a, max(b, a + 1), color=_key_color(key), alpha=0.12)
        if g == "entropy":
            ax.set_ylim(top=1.02)
            ax.axhline(threshold, color="gray", lw=0.8, ls="--")
            ax.text(0.01, threshold, f" collapse >= {threshold}", fontsize=6, color="gray",
                    transform=ax.get_yaxis_transform(), va="bottom")
        ax.set_title(titles[g], fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    return fig


def _key_color(key: str) -> str:
    digits = [c for c in key if c.isdigit()]
    return scale_color(int(digits[-1])) if digits and key[-1].isdigit() else "black"


def _key_style(key: str) -> str:
    return "--" if "cross" in key else ":" if "effective_prototypes" in key else "-"


def label_text(labels: np.ndarray, names: Sequence[str], limit: int = 3, abbrev: int = 4) -> str:
    """Short text of a multi-hot label vector (first ``limit`` names, ``abbrev`` letters each)."""
    on = [names[i][:abbrev] for i in np.flatnonzero(labels > 0.5)]
    return " ".join(on[:limit]) + ("+" if len(on) > limit else "")


def shares_label(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two multi-hot vectors have a label in common."""
    return bool(((a > 0.5) & (b > 0.5)).any())


def color_for_match(match: Optional[bool]) -> Optional[str]:
    """Frame colour of a retrieved image: green shares a label with the query, red none."""
    return None if match is None else ("#2ca02c" if match else "#d62728")

