"""``knn``: cosine k-nearest neighbours, a cheap baseline with nothing to train."""

from sklearn.neighbors import KNeighborsClassifier

from featcache.heads.base import POSITIVE_INT, Head
from featcache.params import Options
from featcache.sweeps import Sweep


class KNNHead(Head):
    """Standardised features -> k nearest training rows by cosine distance (brute force)."""

    name = "knn"
    parameter_rules = Head.parameter_rules | {"n_neighbors": [POSITIVE_INT], "weights": [Options("uniform", "distance")]}
    sweep = Sweep("n_neighbors", (1, 3, 5, 10, 20, 50, 100))

    def __init__(self, n_neighbors=10, weights="distance", pca=None, random_state=0, copy=True):
        self.n_neighbors = n_neighbors
        self.weights = weights
        self.pca = pca
        self.random_state = random_state
        self.copy = copy

    def _fit(self, z, codes):
        k = min(self.n_neighbors, len(z))
        self.model_ = KNeighborsClassifier(k, weights=self.weights, metric="cosine", algorithm="brute").fit(z, codes)

    def _scores(self, z):
        return self.model_.predict_proba(z)
