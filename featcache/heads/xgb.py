"""``xgboost``: gradient-boosted hist trees, with defaults that keep a CPU fold within minutes.

A multiclass booster grows one tree per class per round, so on 2048-wide features with 100
classes a round costs over a minute on 2 cores. The defaults therefore project the standardised
features on 64 principal components, use 64 histogram bins, subsample rows and columns, and stop
early on a held-out slice of the training rows. ``device=auto`` uses CUDA when this XGBoost was
built with it and a GPU is visible.
"""

import shutil

import numpy as np

from featcache.heads.base import CLASS_WEIGHT, FRACTION, POSITIVE, POSITIVE_INT, Head, sample_weights, validation_slice
from featcache.params import Interval, Options
from featcache.shots import Holdout
from featcache.sweeps import Sweep

SHARE = Interval(float, 0, 1, closed="right")


class XGBoostHead(Head):
    name = "xgboost"
    parameter_rules = Head.parameter_rules | {
        "n_estimators": [POSITIVE_INT], "learning_rate": [POSITIVE], "max_depth": [POSITIVE_INT],
        "max_bin": [POSITIVE_INT], "subsample": [SHARE], "colsample_bytree": [SHARE],
        "early_stopping_rounds": [POSITIVE_INT, None], "validation_fraction": [FRACTION],
        "device": [Options("auto", "cpu", "cuda")], "class_weight": CLASS_WEIGHT}
    holdout = Holdout("validation_fraction", {"early_stopping_rounds": None})
    sweep = Sweep("learning_rate", (0.05, 0.1, 0.3), also={"max_depth": (2, 4, 6)})

    def __init__(self, n_estimators=200, learning_rate=0.3, max_depth=4, max_bin=64, subsample=0.8,
                 colsample_bytree=0.5, early_stopping_rounds=10, validation_fraction=0.1, device="auto",
                 class_weight=None, pca=64, random_state=0, copy=True):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.max_bin = max_bin
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.early_stopping_rounds = early_stopping_rounds
        self.validation_fraction = validation_fraction
        self.device = device
        self.class_weight = class_weight
        self.pca = pca
        self.random_state = random_state
        self.copy = copy

    def _fit(self, z, codes):
        from xgboost import XGBClassifier

        stopping = self.early_stopping_rounds
        fit_rows, stop_rows = (validation_slice(codes, self.validation_fraction, self.random_state, self.paired_)
                               if stopping else (np.arange(len(codes)), None))
        self.model_ = XGBClassifier(
            n_estimators=self.n_estimators, learning_rate=self.learning_rate, max_depth=self.max_depth,
            max_bin=self.max_bin, subsample=self.subsample, colsample_bytree=self.colsample_bytree,
            tree_method="hist", device=resolve_device(self.device), early_stopping_rounds=stopping,
            random_state=self.random_state, objective="multi:softprob", num_class=len(self.classes_),
        )
        evaluation = [(z[stop_rows], codes[stop_rows])] if stopping else None
        self.model_.fit(z[fit_rows], codes[fit_rows], sample_weight=sample_weights(self.class_weight, codes[fit_rows]),
                        eval_set=evaluation, verbose=False)

    def _scores(self, z):
        return self.model_.predict_proba(z)


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import xgboost

    has_cuda = xgboost.build_info().get("USE_CUDA", False) and shutil.which("nvidia-smi") is not None
    return "cuda" if has_cuda else "cpu"
