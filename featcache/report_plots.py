"""The report's figures, drawn on matplotlib's Agg canvas and returned as PNG bytes.

Figures are made with ``matplotlib.figure.Figure`` and ``FigureCanvasAgg`` instead of pyplot, so
building a report neither switches the process-wide backend nor leaves figures open (it may be
called from a notebook or a long-running process).
"""

import io
import textwrap

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

ANNOTATE_CELLS_UP_TO = 15  # classes; beyond this the counts in the heatmap cells are unreadable
LABEL_TICKS_UP_TO = 40  # classes; beyond this the class names on the axes overlap
WRAP = 40  # characters per line of an approach name
LINE_INCHES = 0.16  # height of one line of 8-point text
MARKERS = "osD^vP*Xh<>"  # with 10 colours: 110 approaches before a marker and colour repeat


def accuracy_plot(labels, means, stds, tests) -> bytes:
    """CV accuracy (%) ± std over folds per approach, best at the top; test accuracy as crosses.

    Long approach names are wrapped, and each row is as tall as the longest wrapped name."""
    wrapped = _wrapped(labels)
    lines = max(label.count("\n") + 1 for label in wrapped)
    y = np.arange(len(labels))[::-1]
    fig = _figure(9, 1.2 + (0.1 + LINE_INCHES * lines) * len(labels))
    ax = fig.add_subplot()
    ax.errorbar(_percent(means), y, xerr=_percent(stds), fmt="o", capsize=4, label="CV mean ± std")
    if any(t is not None for t in tests):
        ax.plot(_percent(tests), y, "x", color="tab:red", label="test")
    ax.set_yticks(y, wrapped, fontsize=8)
    ax.set_xlabel("accuracy (%)")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=2, fontsize="small")
    return _png(fig)


def accuracy_vs_time_plot(labels, fit_seconds, means, stds) -> bytes:
    """CV accuracy (%) against fit time per fold on a log axis; each approach has its own marker and colour,
    named in a legend below the plot (labels beside the points would overlap)."""
    wrapped = _wrapped(labels)
    fig = _figure(9, 4.5 + LINE_INCHES * sum(label.count("\n") + 1 for label in wrapped))
    ax = fig.add_subplot()
    colours = matplotlib.color_sequences["tab10"]
    for i, (label, x, y, std) in enumerate(zip(wrapped, fit_seconds, _percent(means), _percent(stds))):
        ax.errorbar(x, y, yerr=std, fmt=MARKERS[i % len(MARKERS)], color=colours[i % len(colours)], capsize=3,
                    label=label)
    return _finish(fig, ax, "fit time per fold (s, log scale)", "CV accuracy (%)", log=True, fontsize=8)


def confusion_plot(matrix, class_names, title: str) -> bytes:
    """Heatmap coloured by the share of each true class (rows), so rare classes stay visible."""
    m = np.asarray(matrix)
    shares = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    size = min(4 + 0.35 * n, 14)
    fig = _figure(size + 1, size)
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of true class", shrink=0.8)
    if n <= LABEL_TICKS_UP_TO:
        ax.set_xticks(range(n), class_names, rotation=90, fontsize=8)
        ax.set_yticks(range(n), class_names, fontsize=8)
    if n <= ANNOTATE_CELLS_UP_TO:
        for (i, j), count in np.ndenumerate(m):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                    color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    return _png(fig)


def sweep_plot(parameter: str, log: bool, final_curve: list[dict], fold_curves: list[list[dict]], title: str) -> bytes:
    """Validation accuracy (%) against the swept ``parameter``: the final fit's curve (one line for each setting of
    the other swept parameters) over the folds' curves in grey."""
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    for number, curve in enumerate(fold_curves):
        for others, (x, y) in _series(curve, parameter).items():
            ax.plot(x, y, color="0.75", linewidth=0.8, label="CV folds" if number == 0 and not others else None)
    for others, (x, y) in _series(final_curve, parameter).items():
        ax.plot(x, y, marker="o", label=f"final fit {others}".rstrip())
    ax.set_title(title, fontsize=10)
    return _finish(fig, ax, f"{parameter}{' (log scale)' if log else ''}", "validation accuracy (%)", log=log,
                   ncols=3, fontsize="small")


def learning_curve_plot(labels, curves) -> bytes:
    """Accuracy (%) against images per class (log axis), one line per approach: the mean over the repeats in
    a band from the lowest to the highest repeat. ``curves``: per approach, (shot counts, accuracies per repeat)."""
    fig = _figure(8, 5)
    ax = fig.add_subplot()
    colours = matplotlib.color_sequences["tab10"]
    for i, (label, (shots, accuracies)) in enumerate(zip(_wrapped(labels), curves)):
        runs = 100 * np.array(accuracies, dtype=float)
        colour = colours[i % len(colours)]
        ax.fill_between(shots, runs.min(axis=1), runs.max(axis=1), color=colour, alpha=0.2)
        ax.plot(shots, runs.mean(axis=1), marker=MARKERS[i % len(MARKERS)], color=colour, label=label)
    return _finish(fig, ax, "training images per class (log scale)", "accuracy (%)", log=True, fontsize=8)


def _series(curve: list[dict], parameter: str) -> dict[str, tuple]:
    """{"name=value ..." of the other parameters: (values of ``parameter``, accuracies in %)}, sorted by value."""
    lines: dict[str, list] = {}
    for point in curve:
        others = " ".join(f"{k}={v}" for k, v in point["params"].items() if k != parameter)
        lines.setdefault(others, []).append((point["params"][parameter], 100 * point["accuracy"]))
    return {others: tuple(zip(*sorted(points))) for others, points in lines.items()}


def _wrapped(labels) -> list[str]:
    return [textwrap.fill(label, WRAP, break_long_words=False, break_on_hyphens=False) for label in labels]


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _percent(values) -> np.ndarray:
    """Fractions to percent; None (a missing value) becomes NaN, which matplotlib leaves out."""
    return 100 * np.array([np.nan if v is None else v for v in values], dtype=float)


def _finish(fig, ax, xlabel: str, ylabel: str, log: bool, **legend) -> bytes:
    """Axis labels (log x when ``log``), a light grid and the legend under the plot; the PNG bytes."""
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", **legend)
    return _png(fig)


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()
