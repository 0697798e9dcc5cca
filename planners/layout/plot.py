"""PNG of a layout: address (GiB) over time, one rectangle per buffer, bound and peak marked.

Models: nothing; it draws. Assumes: matplotlib with the Agg backend (no display).
Ignores: buffers thinner than a pixel (they are drawn, just invisible). Above
``MAX_VECTOR_BUFFERS`` buffers the rectangles are painted into a pixel grid instead (one
matplotlib patch each takes minutes for 10^5 buffers; the grid takes a second).
Source: the address-over-time picture of MEMO (Zhao et al., 2024) figure 9.
"""

from __future__ import annotations

from hwmodels.units import GiB
from planners.layout.instance import LayoutInstance

MAX_VECTOR_BUFFERS = 20_000
RASTER_PX = (600, 1200)  # rows (address) x columns (time)


def plot_layout(instance: LayoutInstance, offsets: dict[str, int], path: str, *, title: str = "",
                lower_bound_bytes: int | None = None) -> str:
    """Draw the layout into ``path``; returns a note on how ("" for one rectangle per buffer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    fig, ax = plt.subplots(figsize=(10, 5), dpi=120)
    bufs = instance.buffers
    peak = max((offsets[b.bid] + b.size_bytes for b in bufs), default=0)
    t_end = max((b.upper for b in bufs), default=0)
    note = ""
    if len(bufs) > MAX_VECTOR_BUFFERS:
        import numpy as np

        rows, cols = RASTER_PX
        top = max(peak * 1.05, 1.0)
        sx, sy = cols / max(1, t_end), rows / top
        img = np.ones((rows, cols, 3))
        palette = np.array([plt.cm.tab20(i)[:3] for i in range(20)])
        for i, b in enumerate(bufs):
            off = offsets[b.bid]
            x0, y0 = int(b.lower * sx), int(off * sy)
            img[y0:max(y0 + 1, int((off + b.size_bytes) * sy)), x0:max(x0 + 1, int(b.upper * sx))] = palette[i % 20]
        ax.imshow(img, origin="lower", extent=(0, max(1, t_end), 0, top / GiB), aspect="auto",
                  interpolation="nearest")
        note = f"{len(bufs):,} buffers painted on a {cols} x {rows} pixel grid (over {MAX_VECTOR_BUFFERS:,})"
    else:
        rects = [Rectangle((b.lower, offsets[b.bid] / GiB), b.upper - b.lower, b.size_bytes / GiB)
                 for b in bufs]
        colors = [plt.cm.tab20(i % 20) for i in range(len(rects))]
        ax.add_collection(PatchCollection(rects, facecolor=colors, edgecolor="none", alpha=0.9))
    ax.axhline(peak / GiB, color="black", lw=1, label=f"planned peak {peak / GiB:.2f} GiB")
    if lower_bound_bytes is not None:
        ax.axhline(lower_bound_bytes / GiB, color="red", lw=1, ls="--",
                   label=f"lower bound {lower_bound_bytes / GiB:.2f} GiB")
    ax.set_xlim(0, max(1, t_end))
    ax.set_ylim(0, max(peak / GiB * 1.05, 1e-6))
    ax.set_xlabel("time (op / event index)")
    ax.set_ylabel("address (GiB)")
    ax.set_title(title or instance.name)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return note
