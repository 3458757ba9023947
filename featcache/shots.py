"""Learning curves and few-shot: heads trained on k labelled images per class.

The draws (:func:`shot_draws`) depend only on the labels, the seed and the repeat: for each repeat every
class's training rows are shuffled once and k shots are the first k of each class, so the draws are
nested (the 5-shot rows hold the 2-shot rows) and every head gets the same rows. Each draw is scored on
the test split; a cache without one scores repeat r on the held-out fold r mod folds, drawing from its
training fold.

A head that holds out part of its training rows (early stopping, calibration) declares how (its
``holdout`` class attribute, a :class:`Holdout`); when the slice would hold less than one image per
class, it is trained with the fixed settings ``without`` instead, and the record says so.
"""

from dataclasses import dataclass

import numpy as np

from featcache.params import Interval, Options, check


@dataclass(frozen=True)
class Holdout:
    """``fraction``: the parameter that sets the share held out; ``without``: the settings that hold out none."""

    fraction: str
    without: dict

    def fallback(self, head, per_class: int) -> dict | None:
        """``without`` when ``per_class`` images per class leave the slice less than one of each class."""
        share = head.get_params()[self.fraction]
        return None if share is None or share * per_class >= 1 else dict(self.without)


ALL = "all"
REPEATS = 5  # draws of every shot count


def parse_shots(values) -> list:
    """Shot counts, increasing, "all" last: each an integer >= 1 or "all"."""
    for value in values:
        check("shots", value, [Interval(int, 1, None), Options(ALL)])
    numbers = sorted({v for v in values if v != ALL})
    return numbers + [ALL] * (ALL in values)


def shot_draws(y: np.ndarray, shots: list, repeat: int, seed: int) -> dict:
    """{k: training rows} for one repeat: the first k of each class's rows in a seeded shuffle (all: every row)."""
    rng = np.random.default_rng([seed, repeat])
    order = {c: rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)}
    return {k: np.sort(np.concatenate([rows if k == ALL else rows[:k] for rows in order.values()])) for k in shots}


def learning_curve(estimator, features, folds, shots: list, repeats: int, seed: int) -> dict:
    """Accuracy at each shot count, for every repeat, on the test split (else the held-out folds). On the test
    split, "all" is the same rows in every repeat: it is fitted and scored once, and that score stands for each."""
    from sklearn.base import clone

    from featcache.evaluation import scores

    check("repeats", repeats, [Interval(int, 1, None)])
    n_classes = len(features.class_names)
    points = {k: {"shots": k, "accuracies": [], "balanced_accuracies": [], "fallback": None} for k in shots}
    for repeat in range(repeats):
        train, x_eval, y_eval = _pool(features, folds, repeat)
        for k, rows in shot_draws(features.y_train[train], shots, repeat, seed).items():
            if k == ALL and repeat and features.x_test is not None:
                for key in ("accuracies", "balanced_accuracies"):
                    points[k][key].append(points[k][key][0])
                continue
            head = clone(estimator)
            holdout = getattr(head, "holdout", None)
            fallback = holdout.fallback(head, _smallest(features.y_train[train][rows])) if holdout else None
            head.set_params(**(fallback or {})).fit(features.x_train[train][rows], features.y_train[train][rows])
            metrics, _ = scores(head, x_eval, y_eval, n_classes)
            points[k]["accuracies"].append(metrics["accuracy"])
            points[k]["balanced_accuracies"].append(metrics["balanced_accuracy"])
            points[k]["fallback"] = fallback
    return {"repeats": repeats, "seed": seed, "scored_on": "test" if features.x_test is not None else "held-out folds",
            "points": list(points.values())}


def _pool(features, folds, repeat: int):
    """(rows to draw from, rows to score on): the training split and the test split, else fold repeat mod k."""
    if features.x_test is not None:
        return np.arange(len(features.y_train)), features.x_test, features.y_test
    train, held_out = folds[repeat % len(folds)]
    return train, features.x_train[held_out], features.y_train[held_out]


def _smallest(y: np.ndarray) -> int:
    counts = np.bincount(y)
    return int(counts[counts > 0].min())


def check_shots(shots: list, y: np.ndarray) -> None:
    """Every class has at least as many images as the largest shot count (a ParameterError naming the smallest)."""
    counts = np.bincount(y)
    smallest = int(np.flatnonzero(counts == _smallest(y))[0])
    for k in shots:
        if k != ALL:
            check("shots", k, [Interval(int, 1, int(counts[smallest]))],
                  owner=f"class {smallest} has {counts[smallest]} training images")
