"""Figures itwinai writes: predictions against the truth (regression outputs)."""

from __future__ import annotations

from pathlib import Path


def prediction_vs_truth(pred, truth, path: str | Path, title: str = "prediction against truth"):
    """A scatter of every predicted value against its true value, with the y = x line; written as PNG and returned
    (mlflow's log_figure takes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    p, t = np.asarray(pred, dtype=float).reshape(-1), np.asarray(truth, dtype=float).reshape(-1)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.scatter(t, p, s=2, alpha=0.3)
    lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=1)
    rmse = float(np.sqrt(((p - t) ** 2).mean()))
    ax.set(xlabel="truth", ylabel="prediction", title=f"{title}\nRMSE {rmse:.4f} over {len(t)} values")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return fig
