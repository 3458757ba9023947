"""Numbers the report computes from records: paired fold tests and the most-confused classes."""

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class PairedTest:
    """Outcome of comparing two approaches' scores on the same k folds (``difference`` = mean of a - b)."""

    difference: float
    t: float
    p: float
    df: int

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p < alpha


def corrected_resampled_ttest(a, b) -> PairedTest:
    """Nadeau & Bengio (2003) corrected resampled t-test of scores ``a`` and ``b`` on the same k folds.

    A plain paired t-test takes the k fold scores as independent samples, but the k training sets
    overlap, so it underestimates the variance and calls far too many differences significant.
    The correction adds n_test/n_train (1/(k-1) for k-fold CV) to the 1/k factor:

        t = mean(d) / sqrt((1/k + 1/(k-1)) * var(d, ddof=1)),   df = k - 1,   two-sided p.

    Zero variance gives t = 0, p = 1 when every difference is 0, and t = ±inf, p = 0 otherwise.
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    k = d.size
    if k < 2:
        raise ValueError(f"a paired fold test needs at least 2 folds, got {k}")
    mean, variance = float(d.mean()), float(d.var(ddof=1))
    if variance == 0:
        t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
    else:
        t = mean / math.sqrt((1 / k + 1 / (k - 1)) * variance)
    p = float(2 * stats.t.sf(abs(t), df=k - 1))
    return PairedTest(difference=mean, t=t, p=p, df=k - 1)


@dataclass(frozen=True)
class Confusion:
    """One off-diagonal cell: ``count`` samples of class ``true`` predicted as ``predicted``."""

    true: str
    predicted: str
    count: int
    share: float  # of all samples of the true class


def most_confused(matrix, class_names, top: int = 10) -> list[Confusion]:
    """The ``top`` largest off-diagonal cells (rows = true class), each direction on its own, zeros left out."""
    m = np.asarray(matrix)
    if m.shape != (len(class_names), len(class_names)):
        raise ValueError(f"confusion matrix of shape {m.shape} for {len(class_names)} class names")
    row_totals = m.sum(axis=1)
    cells = [(int(m[i, j]), i, j) for i, j in zip(*np.nonzero(m)) if i != j]
    cells.sort(key=lambda cell: (-cell[0], cell[1], cell[2]))
    return [
        Confusion(class_names[i], class_names[j], count, count / row_totals[i])
        for count, i, j in cells[:top]
    ]
