"""PNG figures for the analysis tools, drawn with matplotlib's Agg canvas.

Figures are built with ``matplotlib.figure.Figure`` and ``FigureCanvasAgg`` directly, never
through ``pyplot``: no global backend switch, no display needed, nothing left open. Each function
takes plain numbers (lists, numpy arrays or CPU tensors), writes one PNG and returns its path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "errorbar_plot",
    "grouped_bar_plot",
    "heatmap_panels",
    "hist2d_panels",
    "new_figure",
    "save_figure",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _matplotlib() -> Any:
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'logitkd[analysis]'") from err
    from matplotlib.figure import Figure

    return Figure


def new_figure(ncols: int = 1, nrows: int = 1, panel_size: tuple[float, float] = (4.5, 3.5)):
    """A ``(figure, axes_array)`` pair not registered with pyplot (``axes`` is 2-D)."""
    figure_cls = _matplotlib()
    fig = figure_cls(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """Render ``fig`` to a PNG at ``path`` (parents created) with the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def _array(name: str, values: Any, ndim: int) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    return arr


def errorbar_plot(
    series: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    references: Mapping[str, tuple[float, float]] | None = None,
) -> Path:
    """Lines with error bars: ``series[label] = (x, mean, err)``; NaN errors draw no bar.

    ``references[label] = (mean, err)`` draws a horizontal line with a shaded ``± err`` band (a
    baseline that does not depend on ``x``).
    """
    if not series and not references:
        raise ValueError("series and references are both empty: nothing to plot")
    fig, axes = new_figure()
    ax = axes[0, 0]
    for i, (label, (x, mean, err)) in enumerate(series.items()):
        xs, ms, es = (_array(f"series[{label!r}]", v, 1) for v in (x, mean, err))
        if not len(xs) == len(ms) == len(es):
            raise ValueError(f"series[{label!r}]: x, mean and err must have the same length")
        order = np.argsort(xs)
        ax.errorbar(
            xs[order],
            ms[order],
            yerr=np.nan_to_num(es[order]),
            marker="o",
            capsize=3,
            label=label,
            color=f"C{i % 10}",
        )
    for j, (label, (mean, err)) in enumerate((references or {}).items()):
        color = f"C{(len(series) + j) % 10}"  # distinct from the lines' colours
        ax.axhline(mean, linestyle="--", linewidth=1, label=label, color=color)
        if math.isfinite(err):
            ax.axhspan(mean - err, mean + err, alpha=0.12, color=color)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def grouped_bar_plot(
    categories: Sequence[str],
    series: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    ylabel: str,
    title: str = "",
) -> Path:
    """Grouped bars: one group per category, one bar per series (``series[label][i]``)."""
    if not categories or not series:
        raise ValueError("categories and series must be non-empty")
    fig, axes = new_figure(panel_size=(max(4.5, 0.9 * len(categories) * len(series)), 3.5))
    ax = axes[0, 0]
    width = 0.8 / len(series)
    x = np.arange(len(categories))
    for k, (label, values) in enumerate(series.items()):
        v = _array(f"series[{label!r}]", values, 1)
        if len(v) != len(categories):
            raise ValueError(
                f"series[{label!r}] has {len(v)} values for {len(categories)} categories"
            )
        bars = ax.bar(x + (k - (len(series) - 1) / 2) * width, v, width, label=label)
        ax.bar_label(bars, fmt="%.3f", fontsize="x-small")
    rotate = len(categories) > 4
    ax.set_xticks(
        x, list(categories), rotation=30 if rotate else 0, ha="right" if rotate else "center"
    )
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def hist2d_panels(
    panels: Mapping[str, tuple[Any, Any]],
    path: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    bins: int = 40,
    title: str = "",
) -> Path:
    """One bivariate histogram per panel (``panels[label] = (x, y)``) on shared axis ranges."""
    if not panels:
        raise ValueError("panels must be non-empty")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    data = {k: (_array(f"{k} x", x, 1), _array(f"{k} y", y, 1)) for k, (x, y) in panels.items()}
    for k, (x, y) in data.items():
        if len(x) != len(y) or not len(x) or not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError(f"panel {k!r}: x and y must be non-empty, finite and of equal length")
    all_x = np.concatenate([x for x, _ in data.values()])
    all_y = np.concatenate([y for _, y in data.values()])
    # Shared ranges so that a shift of the cloud between teacher and students is visible.
    xr = (float(all_x.min()), float(all_x.max()) + 1e-9)
    yr = (float(all_y.min()), float(all_y.max()) + 1e-9)
    fig, axes = new_figure(ncols=len(data), panel_size=(4.0, 3.6))
    for ax, (label, (x, y)) in zip(axes[0], data.items()):
        *_, image = ax.hist2d(x, y, bins=bins, range=[xr, yr], cmap="viridis", cmin=1)
        ax.set_title(label, fontsize="medium")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        fig.colorbar(image, ax=ax, label="samples")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def heatmap_panels(
    panels: Mapping[str, Any],
    path: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    symmetric: bool = True,
) -> Path:
    """One heatmap per panel (``panels[label]`` a 2-D array); ``symmetric`` centres the colour
    scale on 0 (a diverging map, shared across panels)."""
    if not panels:
        raise ValueError("panels must be non-empty")
    data = {k: _array(f"panels[{k!r}]", v, 2) for k, v in panels.items()}
    finite = [np.abs(a[np.isfinite(a)]) for a in data.values()]
    vmax = max((float(f.max()) for f in finite if f.size), default=0.0) or 1.0
    fig, axes = new_figure(ncols=len(data), panel_size=(4.2, 3.6))
    for ax, (label, a) in zip(axes[0], data.items()):
        if symmetric:
            image = ax.imshow(a, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
        else:
            image = ax.imshow(a, cmap="viridis", aspect="auto")
        ax.set_title(label, fontsize="medium")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        fig.colorbar(image, ax=ax)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
