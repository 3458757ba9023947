"""What the built-in heads share: parameter rules, the scaler (+ optional PCA) front, a validation slice.

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
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from featcache.params import Interval, Options, validate

POSITIVE = Interval(float, 0, None, closed="neither")
POSITIVE_INT = Interval(int, 1, None)
FRACTION = Interval(float, 0, 1, closed="neither")
CLASS_WEIGHT = [Options("balanced"), None]  # "balanced": every class weighs as much in the loss, whatever its count


def check_params(head, owner: str) -> None:
    """Raise ParameterError naming ``owner`` and the first parameter that breaks the head's ``parameter_rules``."""
    validate(head.get_params(deep=False), getattr(head, "parameter_rules", {}), owner)


class Head(ClassifierMixin, BaseEstimator):
    """Base of the built-in heads. Subclasses set ``name``, extend ``parameter_rules`` and implement
    ``_fit`` and ``_scores``.

    ``pca``: the number of principal components kept after standardisation (None keeps every feature).
    """

    name = "head"
    parameter_rules = {"pca": [POSITIVE_INT, None], "random_state": [Interval(int, None, None)]}

    def fit(self, x, y):
        check_params(self, self.name)
        x, y = validate_data(self, x, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError("a head needs at least 2 classes in its training data, got one class")
        front = [StandardScaler()] + ([PCA(min(self.pca, *x.shape), random_state=self.random_state)] if self.pca else [])
        self.front_ = make_pipeline(*front).fit(x)
        self._fit(self._transform(x), codes)
        return self

    def predict_proba(self, x) -> np.ndarray:
        proba = np.asarray(self._scores(self._front(x)), dtype=np.float64)
        return proba / proba.sum(axis=1, keepdims=True)  # float32 sums drift from 1 by more than metrics allow

    def predict(self, x) -> np.ndarray:
        scores = self._scores(self._front(x))
        return self.classes_[np.argmax(scores, axis=1)]

    def _front(self, x) -> np.ndarray:
        check_is_fitted(self)
        return self._transform(validate_data(self, x, dtype=np.float32, reset=False))

    def _transform(self, x: np.ndarray) -> np.ndarray:
        """The fitted front on float32 rows. The PCA projection sums in float64 and rounds once: in float32
        a row's projection would change in the last bit with the rows batched alongside it."""
        scaler, *pca = (step for _, step in self.front_.steps)
        z = scaler.transform(x).astype(np.float32, copy=False)
        return pca[0].transform(z.astype(np.float64)).astype(np.float32) if pca else z

    def _fit(self, z: np.ndarray, codes: np.ndarray) -> None:
        raise NotImplementedError

    def _scores(self, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def sample_weights(class_weight, codes: np.ndarray) -> np.ndarray | None:
    """Per-row loss weights for ``class_weight`` ("balanced": n / (classes * count of the row's class)), or None."""
    return compute_sample_weight(class_weight, codes) if class_weight else None


def validation_slice(codes: np.ndarray, fraction: float, seed: int):
    """(training rows, validation rows): a stratified slice when every class can spare a row."""
    rows = np.arange(len(codes))
    stratify = codes if np.bincount(codes).min() >= 2 and fraction * len(codes) >= codes.max() + 1 else None
    return train_test_split(rows, test_size=fraction, random_state=seed, stratify=stratify)
