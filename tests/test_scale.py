"""Large caches: the Keras solver of the linear heads, float16 rows, standardisation in chunks and in place."""

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from featcache import cv, evaluation, heads
from featcache.heads import base, solver


def problem(n, seed, classes=10, dim=32):
    """ReLU-like rows of overlapping classes, offset from zero: a linear head scores 70-80%, not 100%,
    so the CPU and Keras solvers are compared where their optima could differ."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centres = np.random.default_rng(7).normal(0, 0.6, size=(classes, dim))
    return (np.maximum(centres[y] + rng.normal(size=(n, dim)), 0) * 3 + 1).astype(np.float32), y


@pytest.fixture(scope="module")
def data():
    return problem(2000, seed=0), problem(2000, seed=1)


def accuracy(head, x, y):
    return float(np.mean(head.predict(x) == y))


@pytest.mark.parametrize("name, params", [("logreg", {}), ("logreg", {"pca": 16}), ("svm", {}),
                                          ("svm", {"kernel": "rbf", "n_components": 200})])
def test_keras_solver_agrees_with_the_cpu_head(name, params, data):
    (x, y), (x_test, y_test) = data
    cpu = heads.make_head(name, solver="lbfgs", **params).fit(x, y)
    gpu_path = heads.make_head(name, solver="keras", **params).fit(x, y)
    assert gpu_path.solver_ == "keras" and 0.65 < accuracy(cpu, x_test, y_test) < 0.95
    assert abs(accuracy(gpu_path, x_test, y_test) - accuracy(cpu, x_test, y_test)) <= 0.005
    np.testing.assert_allclose(gpu_path.predict_proba(x_test), cpu.predict_proba(x_test), atol=0.01)


def test_keras_solver_on_float16_rows_in_batches(data):
    (x, y), (x_test, y_test) = data
    whole = heads.make_head("logreg", solver="keras").fit(x.astype(np.float16), y)
    batched = heads.make_head("logreg", solver="keras", batch_size=300).fit(x.astype(np.float16), y)
    np.testing.assert_allclose(batched.coef_, whole.coef_, atol=1e-4)
    cpu = heads.make_head("logreg", solver="lbfgs").fit(x.astype(np.float16), y)
    assert abs(accuracy(whole, x_test, y_test) - accuracy(cpu, x_test, y_test)) <= 0.005


def test_binary_logreg_has_the_cpu_objective(data):
    (x, y), (x_test, _) = data
    cpu = heads.make_head("logreg", solver="lbfgs").fit(x, y % 2)
    gpu_path = heads.make_head("logreg", solver="keras").fit(x, y % 2)
    np.testing.assert_allclose(gpu_path.predict_proba(x_test), cpu.predict_proba(x_test), atol=1e-3)


@pytest.mark.parametrize("name", ["logreg", "svm"])
def test_keras_solver_weighs_classes_as_the_cpu_head(name, data):
    """class_weight="balanced" on an imbalanced set: the same weighted objective on both paths, and it
    moves the optimum (the minority class gains recall)."""
    (x, y), (x_test, y_test) = data
    keep = (y >= 3) | (np.arange(len(y)) % 8 == 0)  # classes 0-2 at 1/8 of their images
    x, y = x[keep], y[keep]
    cpu = heads.make_head(name, solver="lbfgs", class_weight="balanced").fit(x, y)
    gpu_path = heads.make_head(name, solver="keras", class_weight="balanced").fit(x, y)
    np.testing.assert_allclose(gpu_path.predict_proba(x_test), cpu.predict_proba(x_test), atol=0.01)
    plain = heads.make_head(name, solver="keras").fit(x, y)
    minority = y_test < 3
    assert accuracy(gpu_path, x_test[minority], y_test[minority]) > accuracy(plain, x_test[minority], y_test[minority])


@pytest.mark.parametrize("name", ["logreg", "svm"])
def test_keras_solver_warm_start_starts_from_the_previous_weights(name, data):
    (x, y), (x_test, _) = data
    cold = heads.make_head(name, solver="keras", C=0.5).fit(x, y)
    warm = heads.make_head(name, solver="keras", C=0.05, warm_start=True).fit(x, y)
    warm.set_params(C=0.5).fit(x, y)  # from the C=0.05 optimum to C=0.5's (the same within L-BFGS's tolerance)
    np.testing.assert_allclose(warm.predict_proba(x_test), cold.predict_proba(x_test), atol=0.01)
    again = warm.fit(x, y)  # from C=0.5's optimum itself: nothing left to do
    assert again.n_iter_ <= 2 < cold.n_iter_


def test_auto_picks_keras_when_keras_sees_a_gpu(monkeypatch, data):
    """With a GPU the batches are moved to it once: on the CPU here, the same code path."""
    (x, y), (x_test, y_test) = data
    assert heads.make_head("logreg").fit(x, y).solver_ == solver.resolve_solver("auto")
    monkeypatch.setattr(solver, "keras_sees_gpu", lambda: True)
    head = heads.make_head("svm", batch_size=500).fit(x, y)
    assert head.solver_ == "keras" and accuracy(head, x_test, y_test) > 0.6


def test_standardisation_in_chunks_matches_one_pass(monkeypatch, data):
    (x, y), (x_test, _) = data
    whole = heads.make_head("logreg").fit(x, y).predict_proba(x_test)
    monkeypatch.setattr(base, "CHUNK_BYTES", 300 * 4 * x.shape[1])  # chunks of 300 rows
    scaler = base.chunked_scaler(x.astype(np.float16))
    reference = StandardScaler().fit(x.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(scaler.mean_, reference.mean_, rtol=1e-12)
    np.testing.assert_allclose(scaler.scale_, reference.scale_, rtol=1e-12)
    np.testing.assert_allclose(heads.make_head("logreg").fit(x, y).predict_proba(x_test), whole, atol=1e-6)


@pytest.mark.parametrize("name", ["logreg", "knn", "svm"])
def test_copy_false_standardises_in_place_and_copy_true_leaves_x_alone(name, data):
    (x, y), (x_test, _) = data
    given = x.copy()
    kept = heads.make_head(name).fit(given, y)
    assert np.array_equal(given, x)
    overwritten = heads.make_head(name, copy=False).fit(given, y)
    assert abs(given.mean()) < 1e-3 and not np.array_equal(given, x)
    np.testing.assert_array_equal(overwritten.predict_proba(x_test), kept.predict_proba(x_test))


class ArrayCache:
    """What cv.load_features reads from a FeatureCache, over arrays of any dtype."""

    def __init__(self, x, y):
        self.x, self.y = x, y
        self.splits, self.label_sets, self.flip = ["train"], ["label"], False
        self.class_names = {"label": [str(c) for c in range(y.max() + 1)]}
        self.rows, self.width, self.dtype = {"train": len(x)}, x.shape[1], str(x.dtype)

    def features(self, split, out, column, flip=False):
        out[:, column:column + self.width] = self.x
        return out

    def labels(self, split, label_set):
        return self.y


def test_cv_keeps_float16_and_folds_give_away_only_their_own_copy(data):
    (x, y), _ = data
    features = cv.load_features(ArrayCache(x.astype(np.float16), y))
    assert features.x_train.dtype == np.float16
    assert cv.load_features(ArrayCache(x.astype(np.float64), y)).x_train.dtype == np.float32
    before = features.x_train.copy()
    folds = evaluation.fold_indices(y, 3, 0)
    fold_metrics, _ = cv.cross_validate_head(heads.make_head("logreg"), {}, features, folds)
    assert np.array_equal(features.x_train, before) and min(m["accuracy"] for m in fold_metrics) > 0.6
    head = heads.make_head("logreg")
    fitted, _, _ = cv.fit_one(head, {}, features.x_train.copy(), y, 0, owned=True)
    assert fitted.copy is False and head.copy is True
