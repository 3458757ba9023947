"""``logreg``: multinomial L2 logistic regression, the published linear-probe protocol."""

import warnings

import numpy as np
from scipy.special import softmax
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from featcache.heads.base import CLASS_WEIGHT, POSITIVE, POSITIVE_INT, Head, sample_weights
from featcache.heads.solver import SOLVERS, affine, fit_linear, resolve_solver, warm_weights
from featcache.params import BOOLEAN, Options
from featcache.sweeps import C_SWEEP


class LogisticRegressionHead(Head):
    """Standardised features -> multinomial logistic regression (L-BFGS).

    ``C`` is the inverse L2 strength; ``--sweep`` chooses it as the protocol does (:attr:`sweep`).
    ``warm_start``: a refit starts from the previous fit's weights (the sweep walks its grid so).
    ``max_iter`` caps L-BFGS: 200 iterations reach within a fraction of a percent of the optimum's
    accuracy on 2048-wide features, so the convergence warning at the cap is silenced.
    ``solver``: ``lbfgs`` is scikit-learn's LogisticRegression on the CPU; ``keras`` minimises the same
    objective with the same L-BFGS, its products in Keras ``batch_size`` rows at a time, standardising
    each batch itself (:mod:`featcache.heads.solver`); ``auto`` picks ``keras`` when Keras sees a GPU.
    """

    name = "logreg"
    parameter_rules = Head.parameter_rules | {"C": [POSITIVE], "max_iter": [POSITIVE_INT], "tol": [POSITIVE],
                                              "class_weight": CLASS_WEIGHT, "warm_start": [BOOLEAN],
                                              "solver": [Options(*SOLVERS)], "batch_size": [POSITIVE_INT]}
    sweep = C_SWEEP

    def __init__(self, C=0.01, max_iter=200, tol=1e-4, class_weight=None, warm_start=False, solver="auto",
                 batch_size=16384, pca=None, random_state=0, copy=True):
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.class_weight = class_weight
        self.warm_start = warm_start
        self.solver = solver
        self.batch_size = batch_size
        self.pca = pca
        self.random_state = random_state
        self.copy = copy

    def _fit_on_raw(self):
        return resolve_solver(self.solver) == "keras" and not self.pca

    def _fit(self, z, codes):
        self.solver_ = resolve_solver(self.solver)
        if self.solver_ == "keras":
            # scikit-learn's lbfgs options for LogisticRegression
            options = {"maxiter": self.max_iter, "maxls": 50, "gtol": self.tol, "ftol": 64 * np.finfo(float).eps}
            # with 2 classes scikit-learn fits one weight vector v; the softmax's two, at their optimum
            # w1 = -w2 = v / 2, carry half its squared norm: C / 2 here gives the same objective
            C = self.C / 2 if len(self.classes_) == 2 else self.C
            scaler = self.front_[0] if self._fit_on_raw() else None
            n_classes = len(self.classes_)
            self.coef_, self.n_iter_ = fit_linear(z, codes, n_classes, "softmax", C, options, self.batch_size, scaler,
                                                  sample_weight=sample_weights(self.class_weight, codes),
                                                  start=warm_weights(self, (z.shape[1] + 1, n_classes)))
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = self.model_ if self.warm_start and hasattr(self, "model_") else LogisticRegression()
            self.model_ = model.set_params(C=self.C, max_iter=self.max_iter, tol=self.tol, class_weight=self.class_weight,
                                           warm_start=self.warm_start).fit(z, codes)
        self.n_iter_ = int(self.model_.n_iter_.max())

    def _scores(self, z):
        return softmax(affine(z, self.coef_), axis=1) if self.solver_ == "keras" else self.model_.predict_proba(z)
