"""Cross-validation over cached features: paired folds, no leaks, records and saved heads."""

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import write_cache
from sklearn.linear_model import LogisticRegression

from featcache import cv, evaluation, heads, records
from featcache.cache import FeatureCache
from featcache.cli import main
from featcache.errors import FeatcacheError, ParameterError


def blobs(n=240, classes=4, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centres = rng.normal(0, 3, size=(classes, dim))
    return (centres[y] + rng.normal(size=(n, dim))).astype(np.float32), y


@pytest.fixture
def features(root):
    x, y = blobs()
    x_test, y_test = blobs(80, seed=0)
    return cv.load_features(write_cache(root, x, y, x_test, y_test, ["a", "b", "c", "d"]))


def test_folds_are_stratified_and_identical_for_every_call():
    _, y = blobs()
    first, second = evaluation.fold_indices(y, 6, seed=3), evaluation.fold_indices(y, 6, seed=3)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(first, second))
    assert not np.array_equal(first[0][1], evaluation.fold_indices(y, 6, seed=4)[0][1])
    assert all(np.bincount(y[held_out]).tolist() == [10, 10, 10, 10] for _, held_out in first)


def test_bad_fold_counts():
    _, y = blobs(n=12)
    with pytest.raises(ParameterError, match=r"folds=1 must be an integer >= 2"):
        evaluation.fold_indices(y, 1, 0)
    with pytest.raises(ParameterError, match=r"class 0 has 3 examples: folds=4 must be an integer in \[2, 3\]"):
        evaluation.fold_indices(y, 4, 0)
    with pytest.raises(FeatcacheError, match="a single class"):
        evaluation.fold_indices(np.zeros(10, dtype=int), 2, 0)


def test_grid_search_sees_the_training_fold_only(monkeypatch, features):
    seen = []
    real_fit = heads.get_head_class("logreg").fit

    def spy(self, x, y):
        seen.append(len(x))
        return real_fit(self, x, y)

    monkeypatch.setattr(heads.get_head_class("logreg"), "fit", spy)
    folds = evaluation.fold_indices(features.y_train, 4, 0)
    cv.cross_validate_head(heads.make_head("logreg"), {"C": [0.1, 1.0]}, features, folds)
    largest_training_fold = max(len(train) for train, _ in folds)
    assert seen and max(seen) <= largest_training_fold  # inner fits and refit stay inside the training fold


def test_metrics_and_records_round_trip(root, features):
    estimators = {"logreg": heads.make_head("logreg"), "knn": heads.make_head("knn")}
    saved = cv.fit_heads(estimators, features, folds=3, test=True, root=root, progress=False)
    assert [r["head"] for r in saved] == ["logreg", "knn"]
    for record in saved:
        loaded = records.load_record(record["id"], root)
        assert loaded["features"]["cache_key"] == features.cache.key
        assert loaded["features"]["backbone"] == features.cache.provenance["backbone"]
        folds = loaded["cv"]["fold_metrics"]
        assert len(folds) == 3 and all(m["accuracy"] > 0.9 for m in folds)
        assert set(folds[0]) >= {"accuracy", "top5_accuracy", "kappa", "log_loss", "macro_f1", "fit_seconds",
                                 "predict_seconds"}
        assert loaded["cv"]["summary"]["accuracy"]["mean"] == pytest.approx(np.mean([m["accuracy"] for m in folds]))
        assert np.array(loaded["cv"]["confusion_matrix"]).sum() == len(features.y_train)
        assert loaded["test"]["accuracy"] > 0.9
        head = heads.load_head(f"{loaded['_folder']}/{loaded['model_file']}")
        assert np.mean(head.predict(features.x_test) == features.y_test) == pytest.approx(loaded["test"]["accuracy"])


def test_any_sklearn_estimator_is_cloned_for_every_fit(root, features):
    """An instance goes in; it is never fitted itself, and the record names it by its class."""
    estimator = LogisticRegression(C=0.5, max_iter=300)
    saved = cv.fit_heads([estimator], features, folds=3, root=root, progress=False)
    assert not hasattr(estimator, "coef_")
    assert saved[0]["head"] == "LogisticRegression" and saved[0]["params"]["C"] == 0.5
    assert saved[0]["cv"]["summary"]["accuracy"]["mean"] > 0.9


def test_bad_grid_values_fail_before_any_fitting(root, features, monkeypatch):
    monkeypatch.setattr(cv, "cross_validate_head", lambda *a, **k: pytest.fail("fitted before checking"))
    with pytest.raises(ParameterError, match="logreg: C=-1 must be a number > 0"):
        cv.fit_heads({"logreg": heads.make_head("logreg")}, features, grid={"C": [1, -1]}, root=root)


def test_nan_features_are_refused():
    x, _ = blobs()
    x[5, 2] = np.nan
    with pytest.raises(FeatcacheError, match="1 rows of the train features contain NaN"):
        cv._checked(x, "train")


SMALL = ["--backbone", "mobilenetv2", "--alpha", "0.35", "--input-size", "32", "--weights", "none"]


def test_fit_end_to_end_from_the_cli(root):
    runner = CliRunner()
    assert runner.invoke(main, ["extract", "--dataset", "synthetic:n=60", *SMALL]).exit_code == 0
    result = runner.invoke(main, ["fit", "--head", "logreg,knn", "--folds", "3", "--label", "coarse", "--test"])
    assert result.exit_code == 0, result.output
    assert "logreg on mobilenetv2(alpha=0.35)-32-avg" in result.output
    saved = records.list_records(root)
    assert [r["head"] for r in saved] == ["logreg", "knn"]
    assert saved[0]["dataset"]["label_set"] == "coarse" and saved[0]["features"]["backbone"]["input_size"] == 32
    assert saved[0]["cv"]["summary"]["accuracy"]["mean"] > 0.5  # 2 coarse classes
    stem = next((root / "features").glob("*.h5"))
    assert saved[0]["features"]["cache_key"] == FeatureCache(stem).key
    listing = runner.invoke(main, ["results", "ls"])
    assert saved[0]["id"] in listing.output
    reported = runner.invoke(main, ["report"])
    assert reported.exit_code == 0 and (root / "reports" / "report.html").is_file()


@pytest.mark.parametrize("args, message", [
    (["--head", "nosuchhead"], "unknown head"),
    (["--head", "svm", "--param", "nosuchparam=1"], "nosuchparam"),
    (["--label", "nosuchlabel"], "no label set 'nosuchlabel'"),
    (["--folds", "500"], "class 0 has 10 examples: --folds 500 must be an integer in [2, 10]"),
    (["--folds", "1"], "--folds 1 must be an integer >= 2"),
    (["--jobs", "0"], "--jobs 0 must be -1 or an integer >= 1"),
    (["--head", "logreg", "--grid", "C=1,-1"], "logreg: C=-1 must be a number > 0"),
    (["--head", "logreg", "--param", "C"], "'C' must look like NAME=VALUE"),
])
def test_fit_bad_input(root, args, message):
    runner = CliRunner()
    assert runner.invoke(main, ["extract", "--dataset", "synthetic:n=20", *SMALL]).exit_code == 0
    result = runner.invoke(main, ["fit", *args])
    assert result.exit_code == 2 and "Traceback" not in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last
