"""--report-png: accuracy per subject with 95% Wilson CIs, and expert share per subject."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def plot_report(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("all", report["overall"]), *report["subjects"].items()]
    names = [f"{s} (n={b['n']})" for s, b in rows]
    accs = [b["acc"] or 0.0 for _, b in rows]
    err_lo = [a - b["ci95"][0] for a, (_, b) in zip(accs, rows, strict=True)]
    err_hi = [b["ci95"][1] - a for a, (_, b) in zip(accs, rows, strict=True)]
    domains = sorted({d for _, b in rows for d in (b["expert_share"] or {})})
    panels = 2 if domains else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 1.6 + 0.45 * len(rows)),
                             squeeze=False)
    ax = axes[0][0]
    ax.barh(names, accs, xerr=[err_lo, err_hi], color="#4c72b0", capsize=3)
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("accuracy (95% Wilson CI)")
    ax.set_title(f"{report['task']}: accuracy")
    if domains:
        ax2 = axes[0][1]
        left = [0.0] * len(rows)
        for d in domains:
            shares = [(b["expert_share"] or {}).get(d, 0.0) for _, b in rows]
            ax2.barh(names, shares, left=left, label=d)
            left = [x + y for x, y in zip(left, shares, strict=True)]
        ax2.set_xlim(0, 1)
        ax2.invert_yaxis()
        ax2.set_xlabel("share of routed token slots")
        ax2.set_title("expert share by domain")
        ax2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=len(domains),
                   fontsize=8)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return path
