"""PNG of a layout: address (GiB) over time, one rectangle per buffer, bound and peak marked.

Models: nothing; it draws. Assumes: matplotlib with the Agg backend (no display).
Ignores: buffers thinner than a pixel (they are drawn, just invisible).
Source: the address-over-time picture of MEMO (Zhao et al., 2024) figure 9.
"""

from __future__ import annotations

from hwmodels.units import GiB
from planners.layout.instance import LayoutInstance


def plot_layout(instance: LayoutInstance, offsets: dict[str, int], path: str, *, title: str = "",
                lower_bound_bytes: int | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    fig, ax = plt.subplots(figsize=(10, 5), dpi=120)
    rects, peak, t_end = [], 0, 0
    for b in instance.buffers:
        off = offsets[b.bid]
        rects.append(Rectangle((b.lower, off / GiB), b.upper - b.lower, b.size_bytes / GiB))
        peak = max(peak, off + b.size_bytes)
        t_end = max(t_end, b.upper)
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
