"""The heads: scikit-learn estimators that learn, validate their parameters, save and plug in."""

import re

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.estimator_checks import parametrize_with_checks

from conftest import install_plugin, write_cache

from featcache import cv, evaluation, heads
from featcache.cli import main
from featcache.errors import FeatcacheError, ParameterError

FAST = {"mlp": {"epochs": 10, "units": 64, "batch_size": 32}, "svm": {}, "logreg": {}, "xgboost": {"n_estimators": 30, "pca": 8},
        "knn": {}}


def blobs(n=300, classes=5, dim=24, seed=0, shift=0.0):
    """Gaussian blobs, one per class, far enough apart that a good head scores near 100%."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centres = np.random.default_rng(99).normal(0, 2.5, size=(classes, dim))
    return (centres[y] + rng.normal(size=(n, dim)) + shift).astype(np.float32), y


def features_of(x, y, root):
    """cv.Features of a real cache file holding (x, y)."""
    return cv.load_features(write_cache(root, x, y))


@pytest.fixture(scope="module")
def data():
    return blobs(), blobs(200, seed=1)


@pytest.mark.parametrize("name", list(FAST))
def test_every_head_learns_and_is_a_classifier(name, data):
    (x, y), (x_test, y_test) = data
    head = heads.make_head(name, **FAST[name]).fit(x, y)
    assert np.mean(head.predict(x_test) == y_test) > 0.9  # chance is 0.2
    proba = head.predict_proba(x_test)
    assert proba.shape == (200, 5) and np.allclose(proba.sum(axis=1), 1)
    assert np.array_equal(head.classes_[np.argmax(proba, axis=1)], head.predict(x_test)) or name == "svm"
    fresh = clone(head)
    with pytest.raises(NotFittedError):
        fresh.predict(x_test)
    assert np.array_equal(fresh.fit(x, y).predict(x_test), head.predict(x_test))


# Parameters small enough for the checks' tiny data sets and quick fits, yet enough to learn them.
CHECKED = {"mlp": {"epochs": 2, "units": 8, "learning_rate": 0.05}, "svm": {}, "logreg": {},
           "xgboost": {"n_estimators": 5}, "knn": {}}
WEIGHTS_BALANCED_ONLY = {"check_class_weight_classifiers": "class_weight takes 'balanced' or None, not a dict"}
EXPECTED_FAILURES = {"knn": {
    "check_methods_subset_invariance": "float32 features: a cosine distance computed in a batch differs in the "
                                       "last bits from the same row's alone, and distance weights turn a row's "
                                       "~1e-7 distance to its own training copy into 1e-6 of probability",
}, **dict.fromkeys(("logreg", "svm", "mlp", "xgboost"), WEIGHTS_BALANCED_ONLY)}


@parametrize_with_checks([heads.make_head(name, **params) for name, params in CHECKED.items()],
                         expected_failed_checks=lambda head: EXPECTED_FAILURES.get(head.name, {}))
def test_heads_meet_the_scikit_learn_contract(estimator, check):
    check(estimator)


@pytest.mark.parametrize("name", list(FAST))
def test_heads_learn_features_of_tiny_scale(name, data):
    """A random-weights backbone pools features of about 1e-11: standardisation must still see them."""
    (x, y), (x_test, y_test) = data
    head = heads.make_head(name, **FAST[name]).fit(x * 1e-11, y)
    assert np.mean(head.predict(x_test * 1e-11) == y_test) > 0.9


def test_svm_rbf_and_string_labels(data):
    (x, y), (x_test, y_test) = data
    names = np.array(list("abcde"))
    head = heads.make_head("svm", kernel="rbf", n_components=100).fit(x, names[y])
    assert np.mean(head.predict(x_test) == names[y_test]) > 0.9
    assert head.decision_function(x_test).shape == (200, 5)


def test_heads_work_inside_sklearn_tools(data):
    (x, y), _ = data
    scores = cross_validate(heads.make_head("logreg"), x, y, cv=3, scoring=["accuracy", "neg_log_loss"])
    assert scores["test_accuracy"].min() > 0.9
    pipeline = make_pipeline(FunctionTransformer(np.abs), heads.make_head("knn"))
    assert pipeline.fit(x, y).score(x, y) > 0.9
    search = GridSearchCV(heads.make_head("svm"), {"C": [1e-4, 1e-2]}, cv=3).fit(x, y)
    assert search.best_score_ > 0.9
    assert heads.make_head("knn").set_params(n_neighbors=1).fit(x, y).score(x, y) == 1.0  # each row finds itself


def test_standardisation_is_fitted_on_training_rows_only(monkeypatch, root):
    """Row ids ride along in column 0: the scaler of each fold must never see a held-out id."""
    import featcache.heads.base

    x, y = blobs(120, classes=3)
    x[:, 0] = np.arange(len(x))
    seen = []

    class SpyScaler(featcache.heads.base.StandardScaler):
        """Fitted chunk by chunk: one set of rows per scaler."""

        def partial_fit(self, z, y=None, sample_weight=None):
            if not hasattr(self, "n_samples_seen_"):
                seen.append(set())
            seen[-1].update(z[:, 0].astype(int))
            return super().partial_fit(z, y, sample_weight)

    monkeypatch.setattr(featcache.heads.base, "StandardScaler", SpyScaler)
    folds = evaluation.fold_indices(y, 4, seed=0)
    features = features_of(x, y, root)
    for name in ("logreg", "knn"):
        seen.clear()
        cv.cross_validate_head(heads.make_head(name), {}, features, folds)
        assert len(seen) == 4
        for rows_seen, (train, held_out) in zip(seen, folds):
            assert rows_seen == set(train) and not rows_seen & set(held_out)


@pytest.mark.backends
def test_mlp_is_deterministic_with_a_seed(data):
    (x, y), (x_test, _) = data
    first = heads.make_head("mlp", **FAST["mlp"], random_state=3).fit(x, y).predict_proba(x_test)
    second = heads.make_head("mlp", **FAST["mlp"], random_state=3).fit(x, y).predict_proba(x_test)
    np.testing.assert_allclose(first, second, atol=1e-6)


@pytest.mark.parametrize("name", list(FAST))
def test_saved_head_reloads_and_predicts_the_same(name, data, tmp_path):
    (x, y), (x_test, _) = data
    head = heads.make_head(name, **FAST[name]).fit(x, y)
    loaded = heads.load_head(tmp_path / heads.save_head(head, tmp_path))
    np.testing.assert_allclose(loaded.predict_proba(x_test), head.predict_proba(x_test), atol=1e-6)
    assert loaded.get_params() == head.get_params()


@pytest.mark.backends
def test_mlp_as_keras_model_covers_every_class(data):
    (x, y), (x_test, _) = data
    keep = y != 2  # class 2 absent from training: its probability column must be 0
    head = heads.make_head("mlp", **FAST["mlp"], pca=10).fit(x[keep], y[keep])
    proba = np.asarray(head.to_keras(6).predict(x_test, verbose=0))
    assert proba.shape == (200, 6) and np.all(proba[:, [2, 5]] == 0)
    np.testing.assert_allclose(proba[:, head.classes_], head.predict_proba(x_test), atol=1e-5)


@pytest.mark.parametrize("name, params, message", [
    ("nosuchhead", {}, "unknown head 'nosuchhead'"),
    ("svm", {"nosuchparam": 1}, "has no parameter 'nosuchparam'"),
])
def test_unknown_heads_and_parameters_are_named(name, params, message):
    with pytest.raises(FeatcacheError, match=re.escape(message)):
        heads.make_head(name, **params)


@pytest.mark.parametrize("name, params, message", [
    ("svm", {"C": -1}, "svm: C=-1 must be a number > 0"),
    ("svm", {"kernel": "poly"}, "svm: kernel='poly' must be one of linear, rbf"),
    ("svm", {"gamma": 0}, "svm: gamma=0 must be a number > 0 or none"),
    ("mlp", {"optimizer": "lion"}, "mlp: optimizer='lion' must be one of adam, sgd, rmsprop, adamw"),
    ("mlp", {"dropout": 1.5}, "mlp: dropout=1.5 must be a number in [0, 1)"),
    ("mlp", {"validation_fraction": 1}, "mlp: validation_fraction=1 must be a number in (0, 1)"),
    ("xgboost", {"device": "tpu"}, "xgboost: device='tpu' must be one of auto, cpu, cuda"),
    ("xgboost", {"subsample": 0}, "xgboost: subsample=0 must be a number in (0, 1]"),
    ("logreg", {"pca": 0}, "logreg: pca=0 must be an integer >= 1 or none"),
    ("logreg", {"random_state": None}, "logreg: random_state=None must be an integer"),
    ("knn", {"n_neighbors": 2.5}, "knn: n_neighbors=2.5 must be an integer >= 1"),
    ("knn", {"n_neighbors": True}, "knn: n_neighbors=True must be an integer >= 1"),
])
def test_bad_parameters_are_named(name, params, message):
    with pytest.raises(ParameterError, match=re.escape(message)):
        heads.make_head(name, **params)


def test_heads_are_named_and_checked_outside_make_head():
    from sklearn.linear_model import LogisticRegression

    head = heads.make_head("svm").set_params(C=0)
    assert heads.name_of(head) == "svm" and heads.name_of(LogisticRegression()) == "LogisticRegression"
    with pytest.raises(ParameterError, match=re.escape("svm: C=0 must be a number > 0")):
        heads.check_params(head)
    heads.check_params(LogisticRegression(C=-1))  # no parameter_rules: nothing to check here


def test_bad_parameter_set_later_fails_at_fit(data):
    (x, y), _ = data
    with pytest.raises(ParameterError, match=re.escape("logreg: C=0 must be a number > 0")):
        heads.make_head("logreg").set_params(C=0).fit(x, y)


PLUGIN = '''
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin


class NearestCentroidHead(ClassifierMixin, BaseEstimator):
    def __init__(self, shrink=0.0):
        self.shrink = shrink

    def fit(self, x, y):
        self.classes_ = np.unique(y)
        self.centroids_ = np.stack([x[y == c].mean(axis=0) for c in self.classes_])
        return self

    def decision_function(self, x):
        return -((x[:, None, :] - self.centroids_[None]) ** 2).sum(axis=2)

    def predict(self, x):
        return self.classes_[np.argmax(self.decision_function(x), axis=1)]
'''


def test_third_party_head_plugs_in_through_an_entry_point(tmp_path, monkeypatch, data, root):
    """A tiny package installed only for this test (a module and its dist-info on sys.path)."""
    install_plugin(tmp_path, monkeypatch, "centroid_head", PLUGIN, "featcache.heads",
                   "centroid = centroid_head:NearestCentroidHead")

    assert "centroid" in heads.available_heads()
    (x, y), (x_test, y_test) = data
    head = heads.make_head("centroid", shrink=0.1).fit(x, y)
    assert heads.name_of(head) == "centroid"
    assert np.mean(head.predict(x_test) == y_test) > 0.9
    with pytest.raises(FeatcacheError, match="has no parameter 'C'"):
        heads.make_head("centroid", C=1)
    fold_metrics, _ = cv.cross_validate_head(heads.make_head("centroid"), {}, features_of(x, y, root),
                                             evaluation.fold_indices(y, 3, 0))
    assert min(m["accuracy"] for m in fold_metrics) > 0.9 and fold_metrics[0]["log_loss"] is None
    listed = CliRunner().invoke(main, ["heads"])
    assert "centroid" in listed.output and "shrink=0.0" in listed.output
