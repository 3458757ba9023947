"""Cross-validation over cached features: paired folds, no leaks, records and saved heads."""

import numpy as np
import pytest
from click.testing import CliRunner

from featcache import heads
from featcache.cli import main
from featcache import cv, records
from featcache.cache import FeatureCache
from featcache.errors import FeatcacheError


def blobs(n=240, classes=4, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centres = rng.normal(0, 3, size=(classes, dim))
    return (centres[y] + rng.normal(size=(n, dim))).astype(np.float32), y


@pytest.fixture
def features():
    x, y = blobs()
    x_test, y_test = blobs(80, seed=0)
    fake = type("Cache", (), {"class_names": {"label": ["a", "b", "c", "d"]}})()
    return cv.Features(fake, "label", x, y, x_test, y_test)


def test_folds_are_stratified_and_identical_for_every_call():
    _, y = blobs()
    first, second = cv.fold_indices(y, 6, seed=3), cv.fold_indices(y, 6, seed=3)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(first, second))
    assert not np.array_equal(first[0][1], cv.fold_indices(y, 6, seed=4)[0][1])
    assert all(np.bincount(y[held_out]).tolist() == [10, 10, 10, 10] for _, held_out in first)


def test_bad_fold_counts():
    _, y = blobs(n=12)
    with pytest.raises(FeatcacheError, match="at least 2"):
        cv.fold_indices(y, 1, 0)
    with pytest.raises(FeatcacheError, match="more than the 3 examples of class 0"):
        cv.fold_indices(y, 4, 0)


def test_grid_search_sees_the_training_fold_only(monkeypatch, features):
    seen = []
    real_fit = heads.get_head_class("logreg").fit

    def spy(self, x, y):
        seen.append(len(x))
        return real_fit(self, x, y)

    monkeypatch.setattr(heads.get_head_class("logreg"), "fit", spy)
    folds = cv.fold_indices(features.y_train, 4, 0)
    cv.cross_validate_head("logreg", {}, {"C": [0.1, 1.0]}, features, folds)
    largest_training_fold = max(len(train) for train, _ in folds)
    assert seen and max(seen) <= largest_training_fold  # inner fits and refit stay inside the training fold


def test_metrics_and_records_round_trip(tmp_path, features, monkeypatch):
    monkeypatch.setattr(cv, "_record", lambda *a: {**_plain_record(*a)})
    saved = cv.fit_heads(["logreg", "knn"], features, folds=3, test=True, root=tmp_path, progress=False)
    for record in saved:
        loaded = records.load_record(record["id"], tmp_path)
        folds = loaded["cv"]["fold_metrics"]
        assert len(folds) == 3 and all(m["accuracy"] > 0.9 for m in folds)
        assert set(folds[0]) >= {"accuracy", "top5_accuracy", "kappa", "log_loss", "macro_f1", "fit_seconds",
                                 "predict_seconds"}
        assert loaded["cv"]["summary"]["accuracy"]["mean"] == pytest.approx(np.mean([m["accuracy"] for m in folds]))
        assert np.array(loaded["cv"]["confusion_matrix"]).sum() == len(features.y_train)
        assert loaded["test"]["accuracy"] > 0.9
        head = heads.load_head(f"{loaded['_folder']}/{loaded['model_file']}")
        assert np.mean(head.predict(features.x_test) == features.y_test) == pytest.approx(loaded["test"]["accuracy"])


def _plain_record(name, final, chosen, features, folds, seed, fold_metrics, matrix, test_result):
    """The record without cache provenance (these tests have no cache file)."""
    return {"id": records.new_record_id(name), "created": records.now_iso(), "kind": "head", "approach": name,
            "head": name, "cv": {"folds": folds, "seed": seed, "fold_metrics": fold_metrics,
                                 "summary": cv.summarize(fold_metrics), "confusion_matrix": matrix},
            "test": test_result}


def test_nan_features_are_refused():
    x, _ = blobs()
    x[5, 2] = np.nan
    with pytest.raises(FeatcacheError, match="1 rows of the train features contain NaN"):
        cv._checked(x, "train")


def test_params_and_grids_are_parsed():
    assert cv.parse_params(["C=0.1", "kernel=rbf", "pca=none", "n=3"]) == {"C": 0.1, "kernel": "rbf", "pca": None,
                                                                          "n": 3}
    assert cv.parse_grid(["C=0.01,1"]) == {"C": [0.01, 1]}
    with pytest.raises(FeatcacheError, match="must look like name=value"):
        cv.parse_params(["C"])


SMALL = ["--backbone", "mobilenetv2", "--alpha", "0.35", "--input-size", "32", "--weights", "none"]


def test_fit_end_to_end_from_the_cli(root):
    runner = CliRunner()
    assert runner.invoke(main, ["extract", "--dataset", "synthetic:n=60", *SMALL]).exit_code == 0
    result = runner.invoke(main, ["fit", "--head", "logreg,knn", "--folds", "3", "--label", "coarse", "--test"])
    assert result.exit_code == 0, result.output
    assert "logreg on mobilenetv2-32-avg" in result.output
    saved = records.list_records(root)
    assert [r["head"] for r in saved] == ["logreg", "knn"]
    assert saved[0]["dataset"]["label_set"] == "coarse" and saved[0]["features"]["input_size"] == 32
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
    (["--folds", "500"], "more than the"),
    (["--head", "logreg", "--grid", "C=1,-1"], "C=-1: must be a number above 0"),
])
def test_fit_bad_input(root, args, message):
    runner = CliRunner()
    assert runner.invoke(main, ["extract", "--dataset", "synthetic:n=20", *SMALL]).exit_code == 0
    result = runner.invoke(main, ["fit", *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
