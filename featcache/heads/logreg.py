"""``logreg``: multinomial L2 logistic regression, the published linear-probe protocol."""

import warnings

from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from featcache.heads.base import CLASS_WEIGHT, POSITIVE, POSITIVE_INT, Head
from featcache.params import BOOLEAN
from featcache.sweeps import C_SWEEP


class LogisticRegressionHead(Head):
    """Standardised features -> multinomial logistic regression (lbfgs).

    ``C`` is the inverse L2 strength; ``--sweep`` chooses it as the protocol does (:attr:`sweep`).
    ``warm_start``: a refit starts from the previous fit's weights (the sweep walks its grid so).
    ``max_iter`` caps lbfgs: 200 iterations reach within a fraction of a percent of the optimum's
    accuracy on 2048-wide features, so the convergence warning at the cap is silenced.
    """

    name = "logreg"
    parameter_rules = Head.parameter_rules | {"C": [POSITIVE], "max_iter": [POSITIVE_INT], "tol": [POSITIVE],
                                              "class_weight": CLASS_WEIGHT, "warm_start": [BOOLEAN]}
    sweep = C_SWEEP

    def __init__(self, C=0.01, max_iter=200, tol=1e-4, class_weight=None, warm_start=False, pca=None,
                 random_state=0):
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.class_weight = class_weight
        self.warm_start = warm_start
        self.pca = pca
        self.random_state = random_state

    def _fit(self, z, codes):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = self.model_ if self.warm_start and hasattr(self, "model_") else LogisticRegression()
            self.model_ = model.set_params(C=self.C, max_iter=self.max_iter, tol=self.tol, class_weight=self.class_weight,
                                           warm_start=self.warm_start).fit(z, codes)
        self.n_iter_ = int(self.model_.n_iter_.max())

    def _scores(self, z):
        return self.model_.predict_proba(z)
