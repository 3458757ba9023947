"""The evaluation protocol: balanced accuracy and class weights, per-class tables, the built-in sweeps."""

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.base import BaseEstimator, ClassifierMixin

from conftest import write_cache
from featcache import cv, evaluation, heads, records, sweeps
from featcache.errors import FeatcacheError, ParameterError
from featcache.heads.base import Head
from featcache.report import build_report


class Fixed(ClassifierMixin, BaseEstimator):
    """Predicts the given labels, whatever the rows."""

    def __init__(self, predicted=None, classes=None):
        self.predicted = predicted
        self.classes = classes

    @property
    def classes_(self):
        return np.asarray(self.classes)

    def predict(self, x):
        return np.asarray(self.predicted)


def test_balanced_accuracy_is_the_mean_recall_on_an_imbalanced_case():
    y = np.array([0] * 90 + [1] * 8 + [2] * 2)
    predicted = np.array([0] * 90 + [0] * 6 + [1] * 2 + [2, 0])  # recalls 1, 2/8, 1/2
    metrics, _ = evaluation.scores(Fixed(predicted, [0, 1, 2]), np.zeros((100, 1)), y, 3)
    assert metrics["accuracy"] == pytest.approx(0.93)
    assert metrics["balanced_accuracy"] == pytest.approx((1 + 2 / 8 + 1 / 2) / 3)
    table = evaluation.per_class(evaluation.confusion(y, predicted, 3))
    assert [c["recall"] for c in table] == pytest.approx([1, 0.25, 0.5])
    assert [c["support"] for c in table] == [90, 8, 2]
    assert table[0]["precision"] == pytest.approx(90 / 97) and table[2]["precision"] == 1.0
    assert metrics["balanced_accuracy"] == pytest.approx(np.mean([c["recall"] for c in table]))
    assert evaluation.imbalance([90, 8, 2, 0]) == 45.0


def imbalanced(n_major=300, n_minor=30, seed=0):
    """Two overlapping classes, ten times as many of class 0."""
    rng = np.random.default_rng(seed)
    x = np.vstack([rng.normal(0, 1, (n_major, 4)), rng.normal(0.8, 1, (n_minor, 4))]).astype(np.float32)
    return x, np.array([0] * n_major + [1] * n_minor)


SMALL_PARAMS = {"logreg": {}, "svm": {}, "xgboost": {"pca": None, "n_estimators": 30},
                "mlp": {"units": 16, "epochs": 10, "patience": 10}}


@pytest.mark.parametrize("name", list(SMALL_PARAMS))
def test_balanced_class_weight_raises_the_minority_recall(name):
    x, y = imbalanced()
    plain = heads.make_head(name, **SMALL_PARAMS[name]).fit(x, y)
    weighted = heads.make_head(name, class_weight="balanced", **SMALL_PARAMS[name]).fit(x, y)
    default = heads.make_head(name, class_weight=None, **SMALL_PARAMS[name]).fit(x, y)
    assert np.array_equal(default.predict_proba(x), plain.predict_proba(x))  # None: the results of before

    x_new, y_new = imbalanced(seed=1)

    def minority_recall(head):
        return np.mean(head.predict(x_new[y_new == 1]) == 1)

    assert minority_recall(weighted) > minority_recall(plain) + 0.1


def test_class_weight_rule():
    with pytest.raises(ParameterError, match="logreg: class_weight='even' must be balanced or none"):
        heads.make_head("logreg", class_weight="even")


def with_row_ids(x, first=0):
    """``x`` with one more column: each row's id (the spy reads it back from what a fit is given)."""
    return np.column_stack([x, np.arange(first, first + len(x))]).astype(np.float32)


def blobs(n, classes=4, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    return (rng.normal(0, 3, (classes, dim))[y] + rng.normal(size=(n, dim))).astype(np.float32), y


def test_the_sweep_never_sees_the_held_out_fold_nor_the_test_split(root, monkeypatch):
    x, y = blobs(120)
    x_test, y_test = blobs(40, seed=1)
    features = cv.load_features(write_cache(root, with_row_ids(x), y, with_row_ids(x_test, 1000), y_test))
    test_ids = set(range(1000, 1040))
    forbidden, seen = [test_ids], []
    real_fit, real_predict, real_run_fold = Head.fit, Head.predict, cv._run_fold

    def spy_fit(self, rows, labels):
        seen.append(("fit", set(rows[:, -1].astype(int)), forbidden[-1]))
        return real_fit(self, rows, labels)

    def spy_predict(self, rows):  # the sweep scores its validation slice with predict; CV and test use predict_proba
        seen.append(("validate", set(rows[:, -1].astype(int)), forbidden[-1]))
        return real_predict(self, rows)

    def run_fold(estimator, grid, rows, labels, train, held_out, *rest):
        forbidden.append(test_ids | set(rows[held_out, -1].astype(int)))
        try:
            return real_run_fold(estimator, grid, rows, labels, train, held_out, *rest)
        finally:
            forbidden.pop()

    monkeypatch.setattr(Head, "fit", spy_fit)
    monkeypatch.setattr(Head, "predict", spy_predict)
    monkeypatch.setattr(cv, "_run_fold", run_fold)
    record, = cv.fit_heads({"logreg": heads.make_head("logreg")}, features, folds=3, test=True, root=root,
                           progress=False, sweep=True)
    sweep = record["cv"]["sweep"]
    curves = [m["sweep_curve"] for m in record["cv"]["fold_metrics"]] + [sweep["final_curve"]]
    assert sweep["parameter"] == "C" and all(15 <= len(curve) <= 17 for curve in curves)  # 13 coarse, 2-4 refined
    fits = [ids for kind, ids, _ in seen if kind == "fit"]
    assert len(fits) == sum(len(curve) + 1 for curve in curves)  # every point, and the refit of the best
    assert all(not ids & banned for _, ids, banned in seen)
    in_folds = sum(len(curve) + 1 for curve in curves[:3])
    assert sum(len(banned) > len(test_ids) for kind, _, banned in seen if kind == "fit") == in_folds
    assert max(len(ids) for ids in fits) == 120 and min(len(ids) for ids in fits) < 80 * 0.85
    assert all("C" in m["chosen_params"] for m in record["cv"]["fold_metrics"])
    chosen = record["params"]["C"]
    assert chosen == max(sweep["final_curve"], key=lambda p: p["accuracy"])["params"]["C"]
    assert f"C={chosen:.3g}" in record["approach"]


def test_the_sweep_grid_is_wide_coarse_then_refined_around_the_best():
    sweep = heads.get_head_class("logreg").sweep
    assert min(sweep.values) <= 1e-6 and max(sweep.values) >= 1e6 and sweep.warm
    assert sweep.refined(1e-2) == pytest.approx([10 ** -(2 + 2 / 3), 10 ** -(2 + 1 / 3), 10 ** -(2 - 1 / 3),
                                                 10 ** -(2 - 2 / 3)])
    assert sweep.refined(1e-6) == pytest.approx([10 ** (-6 + 1 / 3), 10 ** (-6 + 2 / 3)])


@pytest.mark.parametrize("name, params", [("svm", {}), ("knn", {}), ("xgboost", {"n_estimators": 10}),
                                          ("mlp", {"units": 16, "epochs": 8, "learning_rate": 0.05})])
def test_every_built_in_head_has_a_valid_sweep_that_runs(name, params):
    head = heads.make_head(name, **params)
    sweep = sweeps.sweep_of(head)
    cv.check_grid(head, sweep.grid())
    x, y = blobs(80)
    swept = sweeps.Swept(head).fit(x, y)
    points = len(sweep.values) * int(np.prod([len(v) for v in sweep.also.values()])) + 2 * sweep.refine * 2
    assert len(swept.curve_) <= points and swept.best_params_ in [p["params"] for p in swept.curve_]
    assert swept.best_estimator_.get_params()[sweep.parameter] == swept.best_params_[sweep.parameter]
    assert np.mean(swept.predict(x) == y) > 0.5


def test_sweep_needs_a_built_in_sweep_and_no_grid(root):
    from sklearn.linear_model import LogisticRegression

    x, y = blobs(40)
    features = cv.load_features(write_cache(root, x, y))
    with pytest.raises(FeatcacheError, match="LogisticRegression has no built-in sweep: choose its values with grid"):
        cv.fit_heads([LogisticRegression()], features, folds=2, root=root, sweep=True)
    with pytest.raises(ParameterError, match="grid chooses the parameters: sweep=True must be False"):
        cv.fit_heads([heads.make_head("logreg")], features, grid={"C": [1.0]}, folds=2, root=root, sweep=True)


def test_report_shows_balance_per_class_tables_and_sweeps(root, tmp_path):
    x, y = blobs(100)
    keep = (y != 3) | (np.arange(100) < 20)  # class 3: 5 images, the others 25
    features = cv.load_features(write_cache(root, x[keep], y[keep], *blobs(40, seed=1)))
    saved = cv.fit_heads({"knn": heads.make_head("knn")}, features, folds=3, test=True, root=root, progress=False,
                         sweep=True)
    saved += cv.fit_heads({"logreg": heads.make_head("logreg")}, features, folds=3, root=root, progress=False)
    assert saved[0]["dataset"]["class_counts"] == [25, 25, 25, 5]
    markdown = build_report(records.list_records(root), tmp_path).markdown.read_text(encoding="utf-8")
    assert "| Imbalance (largest / smallest class) | 5.00 (25 / 5 training images) |" in markdown
    assert "CV balanced accuracy %" in markdown and "Test balanced accuracy %" in markdown
    assert "#### knn n_neighbors=" in markdown and "(test set)" in markdown and "(CV out-of-fold predictions)" in markdown
    assert "| Class | Support | Precision % | Recall % |" in markdown
    assert "![sweep of knn" in markdown and (tmp_path / "group1-sweep0.png").is_file() or \
        (tmp_path / "group1-sweep1.png").is_file()


def test_cli_sweep_and_class_weight(root):
    from featcache.cli import main

    x, y = blobs(60)
    write_cache(root, x, y)
    result = CliRunner().invoke(main, ["fit", "--head", "knn", "--folds", "2", "--sweep", "--param",
                                       "class_weight=balanced"])
    assert "has no parameter 'class_weight'" in result.output  # knn weighs no loss
    result = CliRunner().invoke(main, ["fit", "--head", "logreg", "--folds", "2", "--sweep", "--param",
                                       "class_weight=balanced"])
    assert result.exit_code == 0, result.output
    record, = records.list_records(root)
    assert record["params"]["class_weight"] == "balanced" and record["cv"]["sweep"]["parameter"] == "C"
    result = CliRunner().invoke(main, ["fit", "--head", "logreg", "--folds", "2", "--sweep", "--grid", "C=1,2"])
    assert result.exit_code == 2 and result.output.strip().splitlines()[-1] == \
        "error: grid chooses the parameters: --sweep True must be False"


def test_shot_draws_are_nested_seeded_and_the_same_for_every_head(root):
    from featcache import shots

    y = np.repeat(np.arange(3), [12, 20, 30])
    draws = shots.shot_draws(y, [1, 2, 5, 10, "all"], repeat=0, seed=7)
    assert all(np.bincount(y[draws[k]]).tolist() == [k] * 3 for k in (1, 2, 5, 10))
    assert len(draws["all"]) == len(y)
    assert all(set(draws[a]) <= set(draws[b]) for a, b in [(1, 2), (2, 5), (5, 10), (10, "all")])
    again = shots.shot_draws(y, [1, 2, 5, 10, "all"], repeat=0, seed=7)
    assert all(np.array_equal(draws[k], again[k]) for k in draws)
    assert not np.array_equal(draws[5], shots.shot_draws(y, [5], repeat=1, seed=7)[5])

    x, labels = blobs(120)
    x_test, y_test = blobs(40, seed=1)
    features = cv.load_features(write_cache(root, with_row_ids(x), labels, with_row_ids(x_test, 1000), y_test))
    trained = {}
    real_fit = Head.fit

    def spy_fit(self, rows, y_rows):
        if len(rows) < 120:  # not the final fit; the draws are told apart by their sizes below
            trained.setdefault(self.name, []).append((type(self).__name__, tuple(sorted(rows[:, -1].astype(int)))))
        return real_fit(self, rows, y_rows)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Head, "fit", spy_fit)
        saved = cv.fit_heads({"logreg": heads.make_head("logreg"), "svm": heads.make_head("svm")}, features,
                             folds=3, test=True, root=root, progress=False, shots=[1, 5, 10, "all"], repeats=2)
    draws_of = {name: {ids for _, ids in calls if len(ids) in (4, 20, 40)} for name, calls in trained.items()}
    assert draws_of["logreg"] == draws_of["svm"] and len(draws_of["logreg"]) == 6  # 3 counts x 2 repeats
    for record in saved:
        curve = record["shots"]
        assert curve["scored_on"] == "test" and curve["repeats"] == 2
        assert [p["shots"] for p in curve["points"]] == [1, 5, 10, "all"]
        assert all(len(p["accuracies"]) == 2 for p in curve["points"])
    fallbacks = {p["shots"]: p["fallback"] for p in saved[1]["shots"]["points"]}
    assert fallbacks == {1: {"calibration_fraction": None}, 5: {"calibration_fraction": None}, 10: None, "all": None}
    assert all(p["fallback"] is None for p in saved[0]["shots"]["points"])
    markdown = build_report(saved, root / "report").markdown.read_text(encoding="utf-8")
    assert "### Learning curves" in markdown and "trained with calibration_fraction=None" in markdown
    assert (root / "report" / "group1-learning-curves.png").is_file()


def test_bad_shots(root):
    x, y = blobs(40)
    features = cv.load_features(write_cache(root, x, y))
    with pytest.raises(ParameterError, match=r"class 0 has 6 training images: shots=7 must be an integer in \[1, 6\]"):
        cv.fit_heads([heads.make_head("knn")], features, folds=3, root=root, shots=[1, 7])  # folds of 10 x 2/3
    with pytest.raises(ParameterError, match="shots='some' must be an integer >= 1 or all"):
        cv.fit_heads([heads.make_head("knn")], features, folds=3, root=root, shots=["some"])
