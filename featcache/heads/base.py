"""What the built-in heads share: parameter rules, the scaler (+ optional PCA) front, a validation slice.

Every head standardises its features (and optionally projects them with PCA) inside ``fit``, so
the front is fitted on the training rows alone: in cross-validation the held-out fold never
leaks into it.

Memory: the scaler's mean and scale are accumulated chunk by chunk (float16 rows are widened one
chunk at a time), and the standardised rows are written back over the input when the head owns
it: when ``fit`` had to convert it anyway, or when the caller passed ``copy=False`` because the
rows are its own copy (cross-validation's training fold). A head whose solver standardises rows
itself (``_fit_on_raw``) gets the raw rows and never materialises them standardised.
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

from featcache.params import BOOLEAN, Interval, Options, validate

POSITIVE = Interval(float, 0, None, closed="neither")
POSITIVE_INT = Interval(int, 1, None)
FRACTION = Interval(float, 0, 1, closed="neither")
CLASS_WEIGHT = [Options("balanced"), None]  # "balanced": every class weighs as much in the loss, whatever its count
FEATURE_DTYPES = [np.float32, np.float16]  # kept as they are; anything else becomes float32
CHUNK_BYTES = 8 * 2**20  # rows standardised at a time, as float32 (scikit-learn's statistics widen them to float64)


def check_params(head, owner: str) -> None:
    """Raise ParameterError naming ``owner`` and the first parameter that breaks the head's ``parameter_rules``."""
    validate(head.get_params(deep=False), getattr(head, "parameter_rules", {}), owner)


class Head(ClassifierMixin, BaseEstimator):
    """Base of the built-in heads. Subclasses set ``name``, extend ``parameter_rules`` and implement
    ``_fit`` and ``_scores``.

    ``pca``: the number of principal components kept after standardisation (None keeps every feature).
    ``copy``: False lets ``fit`` overwrite ``x`` with its standardised rows (the caller gives them away).
    """

    name = "head"
    parameter_rules = {"pca": [POSITIVE_INT, None], "random_state": [Interval(int, None, None)], "copy": [BOOLEAN]}

    def fit(self, x, y, paired=False):
        """``paired``: the second half of the rows are the first half's images mirrored, row for row (flip
        training, :class:`featcache.flips.Flipped`): a slice held out for calibration or early stopping then
        holds out images together with their mirror images."""
        check_params(self, self.name)
        self.paired_ = paired
        given = x
        x, y = validate_data(self, x, y, dtype=FEATURE_DTYPES)
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError("a head needs at least 2 classes in its training data, got one class")
        self.front_ = make_pipeline(chunked_scaler(x))
        if self._fit_on_raw():
            self._fit(x, codes)
            return self
        owned = not self.copy or not np.may_share_memory(x, np.asarray(given))
        z = standardised(x, self.front_[0], out=x if owned and x.dtype == np.float32 else None)
        if self.pca:
            self.front_.steps.append(("pca", PCA(min(self.pca, *x.shape), random_state=self.random_state).fit(z)))
            z = project(z, self.front_[1])
        self._fit(z, codes)
        return self

    def predict_proba(self, x) -> np.ndarray:
        proba = np.asarray(self._scores(self._front(x)), dtype=np.float64)
        return proba / proba.sum(axis=1, keepdims=True)  # float32 sums drift from 1 by more than metrics allow

    def predict(self, x) -> np.ndarray:
        scores = self._scores(self._front(x))
        return self.classes_[np.argmax(scores, axis=1)]

    def _front(self, x) -> np.ndarray:
        check_is_fitted(self)
        return self._transform(validate_data(self, x, dtype=FEATURE_DTYPES, reset=False))

    def _transform(self, x: np.ndarray) -> np.ndarray:
        """The fitted front: float32 rows (float16 rows are widened a chunk at a time)."""
        scaler, *pca = (step for _, step in self.front_.steps)
        z = standardised(x, scaler)
        return project(z, pca[0]) if pca else z

    def _fit_on_raw(self) -> bool:
        """True when ``_fit`` takes the raw rows and standardises them itself with ``self.front_[0]``."""
        return False

    def _fit(self, z: np.ndarray, codes: np.ndarray) -> None:
        raise NotImplementedError

    def _scores(self, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def sample_weights(class_weight, codes: np.ndarray) -> np.ndarray | None:
    """Per-row loss weights for ``class_weight`` ("balanced": n / (classes * count of the row's class)), or None."""
    return compute_sample_weight(class_weight, codes) if class_weight else None


def chunk_rows(x: np.ndarray) -> int:
    return max(1, CHUNK_BYTES // (4 * x.shape[1]))


def chunked_scaler(x: np.ndarray) -> StandardScaler:
    """A StandardScaler fitted chunk by chunk (float64 sums; in one chunk, exactly ``StandardScaler().fit``)."""
    scaler, step = StandardScaler(), chunk_rows(x)
    for start in range(0, len(x), step):
        scaler.partial_fit(x[start:start + step].astype(np.float32, copy=False))
    return scaler


def standardised(x: np.ndarray, scaler: StandardScaler, out: np.ndarray | None = None) -> np.ndarray:
    """``scaler.transform(x)`` as float32, chunk by chunk, into ``out`` (``x`` itself may be ``out``)."""
    out = np.empty(x.shape, dtype=np.float32) if out is None else out
    step = chunk_rows(x)
    for start in range(0, len(x), step):
        out[start:start + step] = scaler.transform(x[start:start + step].astype(np.float32, copy=False))
    return out


def project(z: np.ndarray, pca: PCA) -> np.ndarray:
    """The PCA projection sums in float64 and rounds once: in float32 a row's projection would change in
    the last bit with the rows batched alongside it."""
    return pca.transform(z.astype(np.float64)).astype(np.float32)


def validation_slice(codes: np.ndarray, fraction: float, seed: int, paired: bool = False):
    """(training rows, validation rows): a stratified slice when every class can spare a row. ``paired``: row
    i + n / 2 is row i's mirror image (see :meth:`Head.fit`); both fall on the same side."""
    if paired:
        half = len(codes) // 2
        fit_rows, held_rows = validation_slice(codes[:half], fraction, seed)
        return np.concatenate([fit_rows, fit_rows + half]), np.concatenate([held_rows, held_rows + half])
    rows = np.arange(len(codes))
    stratify = codes if np.bincount(codes).min() >= 2 and fraction * len(codes) >= codes.max() + 1 else None
    return train_test_split(rows, test_size=fraction, random_state=seed, stratify=stratify)
