"""Flip averaging (test-time augmentation) for heads on cached features.

A cache extracted with ``tta="flip"`` holds, beside each image's features, those of the image mirrored
left to right. :func:`featcache.cv.load_features` then gives one row per image with both side by side
(plain first), and :class:`Flipped` fits a head on such rows. Because a row is an image with its flip,
every split of the rows (folds, the grid's inner folds, a sweep's validation slice, few-shot draws,
Dask tasks) keeps an image and its flip on the same side by construction; ``mode="train"`` adds the
flipped rows to the training side only inside ``fit``, after the split is chosen, and tells a built-in
head so (``fit(..., paired=True)``): a slice it holds out for calibration or early stopping takes an
image with its flip.

Modes (:data:`MODES`): ``average`` trains on the plain features and scores with the mean of the head's
class probabilities on both; ``train`` also trains on the flipped features as extra rows, and scores the
same way; ``ignore`` uses the plain features only. With fused caches (all with flip features), a row holds
every cache's plain features, then every cache's flipped ones, in the same order. The saved head is always
the plain head; what the record says (:func:`pipeline_tta`, :func:`around`) rebuilds the same averaging in
predict and export.
"""

import inspect

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.metaestimators import available_if

from featcache import records
from featcache.cache import FLIP_MODES as MODES


def _head_has(method: str):
    return lambda self: hasattr(self.estimator, method)


class Flipped(ClassifierMixin, BaseEstimator):
    """``estimator`` on paired rows (plain features, then flipped ones): see the module docstring.

    A transparent wrapper: the head's own parameters are read and set through it (``set_params(C=1)``), so
    grids and sweeps name them as usual, and ``sweep`` and ``holdout`` are the head's. ``fit`` fits
    ``estimator`` itself (as a Pipeline fits its steps), so a warm start continues from its last fit.
    """

    def __init__(self, estimator=None, mode="average"):
        self.estimator = estimator
        self.mode = mode

    def get_params(self, deep=True):
        own = {"estimator": self.estimator, "mode": self.mode}
        return {**self.estimator.get_params(deep=True), **own} if deep else own

    def set_params(self, **params):
        for name in ("estimator", "mode"):
            if name in params:
                setattr(self, name, params.pop(name))
        if params:
            self.estimator.set_params(**params)
        return self

    @property
    def sweep(self):
        return getattr(self.estimator, "sweep", None)

    @property
    def holdout(self):
        return getattr(self.estimator, "holdout", None)

    @property
    def classes_(self):
        return self.estimator.classes_

    def fit(self, x, y):
        plain, flipped = _views(x)
        if self.mode == "train":  # the flipped rows of the training images, and of those only
            paired = {"paired": True} if "paired" in inspect.signature(self.estimator.fit).parameters else {}
            self.estimator.fit(np.concatenate([plain, flipped]), np.concatenate([y, y]), **paired)
        else:
            self.estimator.fit(plain, y)
        return self

    def _mean(self, method: str, x) -> np.ndarray:
        plain, flipped = _views(x)
        scores = getattr(self.estimator, method)
        if self.mode == "ignore":
            return np.asarray(scores(plain), dtype=np.float64)
        return (np.asarray(scores(plain), dtype=np.float64) + np.asarray(scores(flipped), dtype=np.float64)) / 2

    @available_if(_head_has("predict_proba"))
    def predict_proba(self, x) -> np.ndarray:
        return self._mean("predict_proba", x)

    @available_if(_head_has("decision_function"))
    def decision_function(self, x) -> np.ndarray:
        return self._mean("decision_function", x)

    def predict(self, x) -> np.ndarray:
        for method in ("predict_proba", "decision_function"):
            if hasattr(self.estimator, method):
                scores = self._mean(method, x)
                return self.classes_[np.argmax(scores, axis=1)] if scores.ndim == 2 \
                    else self.classes_[(scores > 0).astype(int)]
        return self.estimator.predict(_views(x)[0])

    @available_if(_head_has("to_keras"))
    def to_keras(self, n_classes: int):
        """The head's Keras model on paired features: applied to both halves, its probabilities averaged."""
        from featcache.backend import keras

        head = self.estimator.to_keras(n_classes)
        width = head.input_shape[-1]
        pairs = keras.Input((2 * width,), name="paired_features")
        views = keras.layers.Reshape((2, width), name="views")(pairs)
        if self.mode == "ignore":
            views = keras.layers.Cropping1D((0, 1), name="plain_view")(views)
        scores = keras.layers.TimeDistributed(head, name="per_view")(views)
        return keras.Model(pairs, keras.layers.GlobalAveragePooling1D(name="view_mean")(scores), name="flipped_head")


def _views(x):
    """The plain and the flipped halves of paired rows."""
    width = x.shape[1] // 2
    return x[:, :width], x[:, width:]


def side_by_side(outputs: list, paired: bool) -> np.ndarray:
    """The features of a fused record's pipelines (one array each, in column order) as its head takes them: side
    by side; ``paired`` (each output [plain | flipped]): every plain part, then every flipped part."""
    if not paired:
        return np.hstack(outputs)
    rows = len(outputs[0])
    return np.concatenate([out.reshape(rows, 2, -1) for out in outputs], axis=2).reshape(rows, -1)


def unwrapped(estimator):
    """The head inside a :class:`Flipped` (what is saved), else ``estimator`` itself."""
    return estimator.estimator if isinstance(estimator, Flipped) else estimator


def pipeline_tta(part: dict) -> str:
    """The ``tta`` of the feature model a record's head takes from one of its caches (``part``: one of
    :func:`featcache.records.feature_parts`): the cache's, except "none" for a head fitted on the plain features
    of a flip cache (flip mode "ignore")."""
    tta = part.get("tta", "none")
    return "none" if tta == "flip" and part.get("flip") in (None, "ignore") else tta


def around(head, features: dict):
    """A record's saved head (``features``: the record's) as it scores images: :class:`Flipped` on paired features
    when it was fitted so."""
    paired = [part for part in records.feature_parts(features) if pipeline_tta(part) == "flip"]
    return Flipped(head, paired[0]["flip"]) if paired else head


def label(parts: list) -> str:
    """What a report's approach adds for flip TTA (``parts``: a record's feature parts): " +flip-mean" for
    flip-mean caches, " +flip" or " +flip-train" for flip averaging."""
    tags = ["flip-mean"] if any(part.get("tta") == "flip-mean" for part in parts) else []
    modes = {part.get("flip") for part in parts}
    tags += [tag for mode, tag in (("average", "flip"), ("train", "flip-train")) if mode in modes]
    return "".join(f" +{tag}" for tag in tags)
