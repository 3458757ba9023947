"""``svm``: a one-vs-rest linear SVM trained for all classes at once; ``kernel=rbf`` through Nystroem.

scikit-learn's LinearSVC solves one class at a time with liblinear (minutes per class on
50,000 x 2048), and SVC's exact RBF kernel is quadratic in the sample count. This head minimises
the same one-vs-rest squared-hinge objective as LinearSVC for every class in one L-BFGS run, whose
cost is two (n x d) @ (d x k) products per iteration. For ``kernel=rbf`` the standardised features
are first mapped by a Nystroem approximation of the RBF kernel (``n_components`` landmarks).

Probabilities: a softmax of the decision scores with one temperature, fitted on a held-out slice
(``calibration_fraction``) of the training rows; the SVM itself is trained on the rest, which costs
one fit instead of a fit and a refit, for a fraction of a point of accuracy.

``solver``: ``lbfgs`` runs the objective in NumPy; ``keras`` runs the same objective and L-BFGS with
its products in Keras, ``batch_size`` rows at a time (:mod:`featcache.heads.solver`); ``auto`` picks
``keras`` when Keras sees a GPU.
"""

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.kernel_approximation import Nystroem

from featcache.heads.base import (CLASS_WEIGHT, FRACTION, POSITIVE, POSITIVE_INT, Head, sample_weights, standardised,
                                  validation_slice)
from featcache.heads.solver import SOLVERS, affine, fit_linear, resolve_solver, warm_weights
from featcache.params import BOOLEAN, Options
from featcache.shots import Holdout
from featcache.sweeps import C_SWEEP


class SVMHead(Head):
    name = "svm"
    parameter_rules = Head.parameter_rules | {
        "C": [POSITIVE], "kernel": [Options("linear", "rbf")], "gamma": [POSITIVE, None],
        "n_components": [POSITIVE_INT], "max_iter": [POSITIVE_INT], "calibration_fraction": [FRACTION, None],
        "class_weight": CLASS_WEIGHT, "warm_start": [BOOLEAN], "solver": [Options(*SOLVERS)],
        "batch_size": [POSITIVE_INT]}
    holdout = Holdout("calibration_fraction", {"calibration_fraction": None})
    sweep = C_SWEEP

    def __init__(self, C=0.001, kernel="linear", gamma=None, n_components=2000, max_iter=100,
                 calibration_fraction=0.1, class_weight=None, warm_start=False, solver="auto", batch_size=16384,
                 pca=None, random_state=0, copy=True):
        self.C = C
        self.kernel = kernel
        self.gamma = gamma
        self.n_components = n_components
        self.max_iter = max_iter
        self.calibration_fraction = calibration_fraction
        self.class_weight = class_weight
        self.warm_start = warm_start
        self.solver = solver
        self.batch_size = batch_size
        self.pca = pca
        self.random_state = random_state
        self.copy = copy

    def _fit_on_raw(self):
        return resolve_solver(self.solver) == "keras" and not self.pca and self.kernel == "linear"

    def _fit(self, z, codes):
        self.solver_ = resolve_solver(self.solver)
        if self.kernel == "rbf":
            gamma = self.gamma or 1.0 / z.shape[1]  # standardised features: scikit-learn's gamma="scale"
            self.kernel_map_ = Nystroem(gamma=gamma, n_components=min(self.n_components, len(z)),
                                        random_state=self.random_state)
            z = self.kernel_map_.fit_transform(z).astype(np.float32)
        n_classes = len(self.classes_)
        calibrated = self.calibration_fraction is not None  # None: every row trains the SVM, temperature 1
        fit_rows, calibration_rows = (
            validation_slice(codes, self.calibration_fraction, self.random_state, self.paired_) if calibrated
            else (np.arange(len(codes)), np.arange(0)))
        start = warm_weights(self, (z.shape[1] + 1, n_classes))
        row_weights = sample_weights(self.class_weight, codes[fit_rows])
        if self.solver_ == "keras":
            scaler = self.front_[0] if self._fit_on_raw() else None
            self.coef_, self.n_iter_ = fit_linear(z, codes, n_classes, "squared_hinge", self.C, {"maxiter": self.max_iter},
                                                  self.batch_size, scaler, fit_rows, row_weights, start)
            calibration = z[calibration_rows] if scaler is None else standardised(z[calibration_rows], scaler)
        else:
            self.coef_, self.n_iter_ = squared_hinge_ovr(z[fit_rows], codes[fit_rows], n_classes, self.C,
                                                         self.max_iter, row_weights, start)
            calibration = z[calibration_rows]
        self.temperature_ = fit_temperature(affine(calibration, self.coef_), codes[calibration_rows]) \
            if calibrated else 1.0

    def decision_function(self, x) -> np.ndarray:
        """A score per class; with two classes one column, the second class's lead: > 0 where it is predicted."""
        decision = self._decision(self._front(x))
        return decision[:, 1] - decision[:, 0] if len(self.classes_) == 2 else decision

    def predict(self, x) -> np.ndarray:
        decision = self._decision(self._front(x))
        return self.classes_[np.argmax(decision, axis=1)]

    def _decision(self, z):
        if self.kernel == "rbf":
            z = self.kernel_map_.transform(z).astype(np.float32)
        return affine(z, self.coef_)

    def _scores(self, z):
        return softmax(self._decision(z) / self.temperature_, axis=1)


def squared_hinge_ovr(z, codes, n_classes, C, max_iter, sample_weight=None, start=None) -> tuple[np.ndarray, int]:
    """Minimise sum_k 0.5 |w_k|^2 + C sum_i s_i max(0, 1 - t_ik (w_k . z_i + b_k))^2 for all k at once.

    t_ik is +1 for the row's class and -1 otherwise (LinearSVC's one-vs-rest objective, intercept
    unpenalised). Scaled by 1 / (C n) so that L-BFGS tolerances do not depend on n or C.
    ``sample_weight``: the row weights s_i (None: 1); ``start``: (d + 1, k) weights to start from (None: zeros).
    Returns the (d + 1, k) weights and the number of L-BFGS iterations.
    """
    n, d = z.shape
    signs = -np.ones((n, n_classes), dtype=np.float32)
    signs[np.arange(n), codes] = 1.0
    scale = 1.0 / (C * n)
    row_weights = 1.0 if sample_weight is None else np.asarray(sample_weight, np.float32)[:, None]

    def objective(flat):
        coef = flat.reshape(d + 1, n_classes)
        slack = np.maximum(0.0, 1.0 - signs * affine(z, coef))
        weights = coef[:-1]
        value = scale * 0.5 * np.sum(weights ** 2) + np.sum(row_weights * slack.astype(np.float64) ** 2) / n
        pull = (-2.0 / n) * signs * slack * row_weights
        gradient = np.vstack([scale * weights + z.T @ pull, pull.sum(axis=0, keepdims=True)])
        return value, gradient.ravel().astype(np.float64)

    initial = np.zeros((d + 1) * n_classes) if start is None else np.ravel(start).astype(np.float64)
    result = minimize(objective, initial, jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
    return result.x.reshape(d + 1, n_classes), result.nit


def fit_temperature(decision: np.ndarray, codes: np.ndarray) -> float:
    """The softmax temperature that minimises the log loss of these held-out decision scores."""
    decision = decision.astype(np.float64)

    def log_loss(log_t):
        return -np.mean(log_softmax(decision / np.exp(log_t), axis=1)[np.arange(len(codes)), codes])

    return float(np.exp(minimize_scalar(log_loss, bounds=(-7.0, 4.0), method="bounded").x))
