"""``logreg``: multinomial L2 logistic regression, the published linear-probe protocol."""

import warnings

from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from featcache.heads.base import POSITIVE, POSITIVE_INT, Head


class LogisticRegressionHead(Head):
    """Standardised features -> multinomial logistic regression (lbfgs).

    ``C`` is the inverse L2 strength; sweep it with ``--grid C=...`` as the protocol does.
    ``max_iter`` caps lbfgs: 200 iterations reach within a fraction of a percent of the optimum's
    accuracy on 2048-wide features, so the convergence warning at the cap is silenced.
    """

    name = "logreg"
    parameter_rules = Head.parameter_rules | {"C": [POSITIVE], "max_iter": [POSITIVE_INT], "tol": [POSITIVE]}

    def __init__(self, C=0.01, max_iter=200, tol=1e-4, pca=None, random_state=0):
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.pca = pca
        self.random_state = random_state

    def _fit(self, z, codes):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model_ = LogisticRegression(C=self.C, max_iter=self.max_iter, tol=self.tol).fit(z, codes)
        self.n_iter_ = int(self.model_.n_iter_.max())

    def _scores(self, z):
        return self.model_.predict_proba(z)
