"""Folds and metrics: pure functions shared by every stage that scores a classifier.

``cv`` (heads on cached features), ``training`` (finetune and scratch) and ``predict`` all use the
same stratified folds, the same metrics and the same layout of class scores over every class of
the dataset, so their numbers are comparable in one report.
"""

import time

import numpy as np
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, cohen_kappa_score, confusion_matrix, f1_score,
                             log_loss, top_k_accuracy_score)
from sklearn.model_selection import StratifiedKFold

from featcache.errors import FeatcacheError
from featcache.params import Interval, check


def fold_indices(y: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified, shuffled folds: the same indices for every head and run with this seed."""
    check("folds", folds, [Interval(int, 2, None)])
    counts = np.bincount(y)
    present = counts[counts > 0]
    if len(present) < 2:
        raise FeatcacheError(f"the labels have a single class ({len(y)} examples): a classifier needs at least 2")
    if folds > present.min():
        smallest = int(np.flatnonzero(counts == present.min())[0])
        check("folds", folds, [Interval(int, 2, int(present.min()))],
              owner=f"class {smallest} has {present.min()} examples")
    return list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def spread_columns(values: np.ndarray, classes: np.ndarray, n_classes: int, fill: float) -> np.ndarray:
    """Columns of ``values`` (one per entry of ``classes``) placed at those class indices of an
    (n, n_classes) array; the classes an estimator never saw get ``fill``."""
    out = np.full((len(values), n_classes), fill, dtype=np.float64)
    out[:, classes] = values
    return out


def class_scores(estimator, x, n_classes: int, method: str):
    """``predict_proba`` or ``decision_function`` laid out over all n_classes (absent classes score lowest);
    None when the estimator has no such method."""
    if not hasattr(estimator, method):
        return None
    raw = np.asarray(getattr(estimator, method)(x), dtype=np.float64)
    if raw.ndim == 1:  # binary decision_function: one column, positive class
        raw = np.column_stack([-raw, raw])
    if method == "predict_proba":  # float32 rows can miss 1 by more than log_loss accepts
        return spread_columns(raw / raw.sum(axis=1, keepdims=True), estimator.classes_, n_classes, 0.0)
    return spread_columns(raw, estimator.classes_, n_classes, raw.min() - 1)


def scores(estimator, x, y: np.ndarray, n_classes: int) -> tuple[dict, np.ndarray]:
    """The metrics of one fitted estimator on (x, y), and its predictions."""
    started = time.perf_counter()
    proba = class_scores(estimator, x, n_classes, "predict_proba")
    decision = proba if proba is not None else class_scores(estimator, x, n_classes, "decision_function")
    predicted = estimator.classes_[np.argmax(decision[:, estimator.classes_], axis=1)] if decision is not None \
        else estimator.predict(x)
    seconds = time.perf_counter() - started
    labels = np.arange(n_classes)
    metrics = {
        "accuracy": float(accuracy_score(y, predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(y, predicted)),  # mean recall of the classes in y
        "top5_accuracy": float(top_k_accuracy_score(y, decision, k=5, labels=labels))
        if decision is not None and n_classes > 5 else None,
        "kappa": float(cohen_kappa_score(y, predicted)),
        "log_loss": float(log_loss(y, proba, labels=labels)) if proba is not None else None,
        "macro_f1": float(f1_score(y, predicted, average="macro", labels=np.unique(y))),
        "predict_seconds": round(seconds, 4),
    }
    return metrics, predicted


def confusion(y: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class, over every class of the dataset."""
    return confusion_matrix(y, predicted, labels=np.arange(n_classes))


def per_class(matrix) -> list[dict]:
    """Support, precision and recall of each class (rows: true class) of a confusion matrix; None where
    a class was never predicted (precision) or never present (recall)."""
    m = np.asarray(matrix, dtype=np.int64)
    hits, support, predicted = np.diag(m), m.sum(axis=1), m.sum(axis=0)
    return [{"support": int(s), "precision": float(h / p) if p else None, "recall": float(h / s) if s else None}
            for h, s, p in zip(hits, support, predicted)]


def imbalance(counts) -> float | None:
    """Largest over smallest count of the classes present; None without two present classes."""
    present = [int(c) for c in counts if c > 0]
    return max(present) / min(present) if len(present) >= 2 else None


def summarize(fold_metrics: list[dict]) -> dict:
    """Mean and standard deviation (ddof=1, as in the reference's fold table) of each numeric metric."""
    summary = {}
    for metric in fold_metrics[0]:
        values = [m[metric] for m in fold_metrics]
        if all(isinstance(v, (int, float)) for v in values):
            summary[metric] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1))}
    return summary
