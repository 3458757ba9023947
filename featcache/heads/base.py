"""What the built-in heads share: parameter checks, the scaler (+ optional PCA) front, a validation slice.

Every head standardises its features (and optionally projects them with PCA) inside ``fit``, so
the front is fitted on the training rows alone: in cross-validation the held-out fold never
leaks into it.
"""

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.decomposition import PCA
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted, validate_data


# Rules: each takes a value and returns what it must be when it is wrong, else None.
def positive(value):
    return None if _is_number(value) and value > 0 else "a number above 0"


def positive_int(value):
    return None if _is_int(value) and value > 0 else "an integer above 0"


def fraction(value):
    return None if _is_number(value) and 0 < value < 1 else "a number between 0 and 1 (exclusive)"


def rate(value):
    return None if _is_number(value) and 0 <= value < 1 else "a number in [0, 1)"


def share(value):
    return None if _is_number(value) and 0 < value <= 1 else "a number in (0, 1]"


def any_int(value):
    return None if _is_int(value) else "an integer"


def one_of(*choices):
    def rule(value):
        return None if value in choices else "one of " + ", ".join(map(str, choices))
    return rule


def optional(rule):
    def check(value):
        return None if value is None else (rule(value) and f"none or {rule(value)}")
    return check


def _is_number(value):
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class Head(ClassifierMixin, BaseEstimator):
    """Base of the built-in heads. Subclasses set ``rules`` and implement ``_fit`` and ``_scores``.

    ``pca``: the number of principal components kept after standardisation (None keeps every feature).
    """

    rules: dict = {}

    def check_params(self) -> None:
        """Raise ValueError naming the first parameter whose value breaks its rule."""
        for name, rule in {"pca": optional(positive_int), "random_state": any_int, **self.rules}.items():
            problem = rule(getattr(self, name))
            if problem:
                raise ValueError(f"{type(self).__name__} parameter {name}={getattr(self, name)!r}: must be {problem}")

    def fit(self, x, y):
        self.check_params()
        x, y = validate_data(self, x, y, dtype=np.float32)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError("a head needs at least 2 classes in its training data")
        front = [StandardScaler()] + ([PCA(min(self.pca, *x.shape), random_state=self.random_state)] if self.pca else [])
        self.front_ = make_pipeline(*front).fit(x)
        self._fit(self.front_.transform(x).astype(np.float32), codes)
        return self

    def predict_proba(self, x) -> np.ndarray:
        proba = np.asarray(self._scores(self._front(x)), dtype=np.float64)
        return proba / proba.sum(axis=1, keepdims=True)  # float32 sums drift from 1 by more than metrics allow

    def predict(self, x) -> np.ndarray:
        return self.classes_[np.argmax(self._scores(self._front(x)), axis=1)]

    def _front(self, x) -> np.ndarray:
        check_is_fitted(self)
        x = validate_data(self, x, dtype=np.float32, reset=False)
        return self.front_.transform(x).astype(np.float32)

    def _fit(self, z: np.ndarray, codes: np.ndarray) -> None:
        raise NotImplementedError

    def _scores(self, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def validation_slice(codes: np.ndarray, fraction: float, seed: int):
    """(training rows, validation rows): a stratified slice when every class can spare a row."""
    rows = np.arange(len(codes))
    stratify = codes if np.bincount(codes).min() >= 2 and fraction * len(codes) >= codes.max() + 1 else None
    return train_test_split(rows, test_size=fraction, random_state=seed, stratify=stratify)
