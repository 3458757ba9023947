"""Built-in hyper-parameter sweeps: each head's own protocol, chosen on a validation slice of its training rows.

A head declares its sweep as data (its ``sweep`` class attribute, a :class:`Sweep`). :class:`Swept` wraps a
head as a scikit-learn meta-estimator (as ``GridSearchCV`` does): ``fit(x, y)`` holds out a stratified
validation slice of ``x``, fits the head on the rest at every point of the sweep, scores each on the slice,
then refits the best setting on all of ``x``. So in k-fold CV it sees the training fold only, and on the
whole training split it never sees the test split. Every point's validation accuracy is kept (``curve_``).

The linear-probe protocol (``C_SWEEP``): the inverse L2 strength over 1e-6..1e6, one point per decade,
then ``refine`` points more on each side of the best one; each fit starts from the weights of the fit at the
next smaller value (warm start), walking from strong to weak regularisation.
"""

import copy
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.model_selection import ParameterGrid

from featcache.errors import FeatcacheError


@dataclass(frozen=True)
class Sweep:
    """``parameter`` over ``values`` (increasing), crossed with every combination of ``also``.

    ``refine``: points added on each side of the best value, evenly spaced in log between it and its grid
    neighbours; ``warm``: the head takes ``warm_start`` and each fit starts from the one at the next smaller
    value; ``log``: plot ``parameter`` on a log axis; ``validation_fraction``: the share of training rows held out.
    """

    parameter: str
    values: tuple
    also: dict = field(default_factory=dict)
    refine: int = 0
    warm: bool = False
    log: bool = True
    validation_fraction: float = 0.2

    def grid(self) -> dict:
        """The coarse points as a GridSearchCV-style grid, for checking them before any fit."""
        return {self.parameter: list(self.values), **{k: list(v) for k, v in self.also.items()}}

    def refined(self, best) -> list:
        """The values added around ``best`` (one of ``values``), between it and its neighbours, in log."""
        index = self.values.index(best)
        neighbours = [self.values[i] for i in (index - 1, index + 1) if 0 <= i < len(self.values)]
        steps = np.arange(1, self.refine + 1) / (self.refine + 1)
        return sorted(float(best * (other / best) ** s) for other in neighbours for s in steps)

    def describe(self) -> dict:
        return {"parameter": self.parameter, "values": list(self.values), "also": {k: list(v) for k, v in
                self.also.items()}, "refine": self.refine, "warm": self.warm, "log": self.log,
                "validation_fraction": self.validation_fraction}


C_SWEEP = Sweep("C", tuple(float(10.0 ** p) for p in range(-6, 7)), refine=2, warm=True)


def sweep_of(estimator) -> Sweep:
    """The head's built-in sweep (its class attribute, or what a wrapper such as
    :class:`featcache.flips.Flipped` passes on); a FeatcacheError for an estimator without one."""
    sweep = getattr(estimator, "sweep", None)
    if not isinstance(sweep, Sweep):
        raise FeatcacheError(f"{type(estimator).__name__} has no built-in sweep: choose its values with grid "
                             "(featcache fit --grid NAME=V1,V2)")
    return sweep


class Swept(ClassifierMixin, BaseEstimator):
    """``estimator`` fitted at the best point of its built-in sweep (see the module docstring).

    After ``fit``: ``best_estimator_`` (refitted on all rows), ``best_params_``, ``curve_`` (a list of
    {"params", "accuracy"} in the order fitted). ``random_state`` draws the validation slice.
    """

    def __init__(self, estimator=None, random_state=0):
        self.estimator = estimator
        self.random_state = random_state

    def fit(self, x, y):
        from featcache.heads.base import validation_slice

        sweep = sweep_of(self.estimator)
        codes = np.unique(y, return_inverse=True)[1]
        fit_rows, validation_rows = validation_slice(codes, sweep.validation_fraction, self.random_state)
        self.curve_ = []

        def evaluate(params: dict, start=None):
            model = copy.deepcopy(start) if start is not None else clone(self.estimator)
            model.set_params(**params, **({"warm_start": True} if sweep.warm else {})).fit(x[fit_rows], y[fit_rows])
            self.curve_.append({"params": params, "accuracy": float(np.mean(model.predict(x[validation_rows])
                                                                              == y[validation_rows]))})
            return model

        starts = {}  # warm sweeps: the fitted model of each coarse value, of the best combination of the others
        for others in ParameterGrid(sweep.also or {}):
            model = None
            for value in sweep.values:
                model = evaluate({sweep.parameter: value, **others}, model if sweep.warm else None)
                starts[value, *others.values()] = model if sweep.warm else None
        best = self._best()  # the first best: the strongest regularisation of equals
        others = {k: v for k, v in best.items() if k != sweep.parameter}
        for value in sweep.refined(best[sweep.parameter]):
            below = max(v for v in sweep.values if v < value) if value > sweep.values[0] else None
            evaluate({sweep.parameter: value, **others}, starts.get((below, *others.values())))
        self.best_params_ = self._best()
        self.best_estimator_ = clone(self.estimator).set_params(**self.best_params_).fit(x, y)
        self.classes_ = self.best_estimator_.classes_
        return self

    def _best(self) -> dict:
        return max(self.curve_, key=lambda point: point["accuracy"])["params"]

    def predict(self, x):
        return self.best_estimator_.predict(x)

    def predict_proba(self, x):
        return self.best_estimator_.predict_proba(x)


def outcome(fitted) -> dict:
    """What a :class:`Swept` fit chose and its curve, as a record stores them; {} for any other estimator."""
    if not isinstance(fitted, Swept):
        return {}
    return {"chosen_params": fitted.best_params_, "sweep_curve": fitted.curve_}
