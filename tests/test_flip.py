"""Flip test-time augmentation: extract --tta, fit --flip, and predict and export averaging the same."""

from dataclasses import replace

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_cache, write_classes
from sklearn.metrics import log_loss

from featcache import cache, cv, evaluation, flips, heads, records
from featcache.errors import ParameterError
from featcache.cli import main
from featcache.compute import Compute, resolve
from featcache.datasets import load_dataset
from featcache.export import export, load_model
from featcache.extract import extract
from featcache.heads.base import Head
from test_predict_export import CLASSES, all_probabilities

SMALL = ["--backbone", "mobilenetv2", "--alpha", "0.35", "--input-size", "32", "--weights", "none"]


def symmetric_dataset():
    """Synthetic images, row 0 of the training split made left-right symmetric (row 1 stays random)."""
    data = load_dataset("synthetic:n=20,size=16")
    images = data.splits["train"].images.array
    images[0, :, 8:] = images[0, :, :8][:, ::-1]
    return data


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, small_spec):
    """The same images extracted with every tta: {tta: FeatureCache}."""
    root = tmp_path_factory.mktemp("flip") / "cache"
    data = symmetric_dataset()
    results = {tta: extract(data, small_spec, root, progress=False, tta=tta) for tta in cache.TTAS}
    assert {r.width for r in results.values()} == {1280}
    return {tta: cache.FeatureCache(r.path) for tta, r in results.items()}


def largest(x):
    return np.abs(x).max()  # random weights: features near 1e-11, so tolerances are relative to it


@pytest.mark.backends
def test_flip_features_of_a_symmetric_image_equal_the_plain_ones(extracted):
    found = extracted["flip"]
    plain, flipped = found.features("train"), found.features("train", flip=True)
    assert np.abs(plain[0] - flipped[0]).max() <= 1e-5 * largest(plain)
    assert np.abs(plain[1] - flipped[1]).max() > 1e-2 * largest(plain)  # an asymmetric image's differ
    np.testing.assert_allclose(plain, extracted["none"].features("train"), rtol=0, atol=1e-6 * largest(plain))
    assert np.array_equal(cv.load_features(found).x_train, np.hstack([plain, flipped]))  # one row an image


def test_flip_mean_stores_the_mean_of_the_flip_datasets(extracted):
    mean = extracted["flip-mean"]
    assert mean.feature_sets == ("features",) and not mean.flip and mean.tta == "flip-mean"
    for split in ("train", "test"):
        flip = extracted["flip"]
        expected = (flip.features(split) + flip.features(split, flip=True)) / 2
        np.testing.assert_allclose(mean.features(split), expected, rtol=0, atol=1e-6 * largest(expected))


def test_tta_keys_its_own_cache_and_none_keeps_the_existing_keys(extracted, small_spec):
    assert len({found.path for found in extracted.values()}) == 3
    assert extracted["flip"].feature_sets == ("features", "features_flip") and extracted["flip"].tta == "flip"
    data = symmetric_dataset()
    assert extracted["none"].key == cache.cache_key(data.fingerprint, small_spec, None, "float32", resolve())
    # the key of this input before tta existed (featcache 3983d89): caches made then are still found
    f32 = Compute("tensorflow")
    assert cache.cache_key("data", small_spec, None, "float32", f32) == \
        "39db3476c9f6721babfa33c93c05b214f2c49cef7e9d4093c7b02624fe187221"
    keys = {cache.cache_key("data", small_spec, None, "float32", f32, tta) for tta in cache.TTAS}
    assert len(keys) == 3


def test_verify_reads_the_flip_features_too(tmp_path, small_spec):
    found = extract(load_dataset("synthetic:n=20"), small_spec, tmp_path, progress=False, tta="flip")
    assert cache.verify(found.path) == []
    with h5py.File(found.path, "a") as f:
        f["train"]["features_flip"][3, 0] = np.nan
    assert cache.verify(found.path) == ["train: features contain NaN or inf"]


# --- fit ---------------------------------------------------------------------------------------

OFFSET = 1000  # the id of an image's flip: its own id + OFFSET


def blobs(n, classes=3, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    return (rng.normal(0, 2, (classes, dim))[y] + rng.normal(size=(n, dim))).astype(np.float32), y


def flip_cache(root, n=90, ids=False):
    """A cache with flip features: each image's flip is its features plus noise. With ``ids`` the last
    column is the row's id (an image's flip: id + OFFSET), for following rows through the fits."""
    x, y = blobs(n + 45)
    (x, x_test), (y, y_test) = np.split(x, [n]), np.split(y, [n])
    rng = np.random.default_rng(2)
    mirrored, mirrored_test = (a + rng.normal(0, 1.5, a.shape).astype(np.float32) for a in (x, x_test))
    if ids:  # test images: 500 on
        x, mirrored = np.column_stack([x, np.arange(n)]), np.column_stack([mirrored, np.arange(n) + OFFSET])
        test_ids = np.arange(len(x_test)) + 500
        x_test, mirrored_test = np.column_stack([x_test, test_ids]), np.column_stack([mirrored_test, test_ids + OFFSET])
    return write_cache(root, x, y, x_test, y_test, flipped=(mirrored, mirrored_test))


@pytest.mark.parametrize("options", [{}, {"grid": {"C": [0.1, 1.0]}}, {"sweep": True}])
def test_training_on_flips_keeps_each_image_and_its_flip_in_the_same_fold(root, monkeypatch, options):
    features = cv.load_features(flip_cache(root, ids=True))
    fits, held = [], [set()]
    real_fit, real_run_fold = Head.fit, cv._run_fold

    def spy_fit(self, rows, labels):
        fits.append((set(rows[:, -1].astype(int)), held[-1]))
        return real_fit(self, rows, labels)

    def spy_run_fold(estimator, grid, x, y, train, held_out, *rest):
        held.append(set(held_out))
        try:
            return real_run_fold(estimator, grid, x, y, train, held_out, *rest)
        finally:
            held.append(set())

    monkeypatch.setattr(Head, "fit", spy_fit)
    monkeypatch.setattr(cv, "_run_fold", spy_run_fold)
    record, = cv.fit_heads({"logreg": heads.make_head("logreg")}, features, folds=3, flip="train", root=root,
                           progress=False, **options)
    for ids, held_out in fits:
        plain = {i for i in ids if i < OFFSET}
        assert {i - OFFSET for i in ids if i >= OFFSET} == plain  # every image trains with its flip, never apart
        assert not plain & held_out
    if not options:  # one fit per fold on exactly its training images and their flips, then the final one
        folds = evaluation.fold_indices(features.y_train, 3, 0)
        assert [ids for ids, _ in fits] == [{*train, *(train + OFFSET)} for train, _ in folds] + \
            [{*range(90), *range(OFFSET, OFFSET + 90)}]
    assert record["features"]["tta"] == "flip" and record["features"]["flip"] == "train"


def saved_head(record, root):
    return heads.load_head(records.record_folder(record["id"], root) / record["model_file"])


def test_average_scores_the_mean_probabilities_of_each_image_and_its_flip(root):
    found = flip_cache(root)
    features = cv.load_features(found)
    assert features.paired and features.x_train.shape == (90, 16)
    fit = dict(folds=3, test=True, root=root, progress=False)
    average, = cv.fit_heads({"logreg": heads.make_head("logreg")}, features, flip="average", **fit)
    ignored, = cv.fit_heads({"logreg": heads.make_head("logreg")}, cv.load_features(found, flip=False), flip="ignore",
                            **fit)
    assert average["_replaced"] == ignored["_replaced"] == []  # other settings: both records stay
    assert (average["features"]["flip"], ignored["features"]["flip"]) == ("average", "ignore")
    assert average["approach"].endswith(" +flip") and not ignored["approach"].endswith("flip")

    plain, mirrored = found.features("test"), found.features("test", flip=True)
    head = saved_head(average, root)
    by_hand = (head.predict_proba(plain) + head.predict_proba(mirrored)) / 2
    assert average["test"]["log_loss"] == pytest.approx(log_loss(features.y_test, by_hand), rel=1e-9)
    head = saved_head(ignored, root)
    assert ignored["test"]["log_loss"] == pytest.approx(log_loss(features.y_test, head.predict_proba(plain)), rel=1e-9)
    assert [m["log_loss"] for m in average["cv"]["fold_metrics"]] != \
        [m["log_loss"] for m in ignored["cv"]["fold_metrics"]]
    again, = cv.fit_heads({"logreg": heads.make_head("logreg")}, features, flip="average", **fit)
    assert again["_replaced"] == [average["id"]]


def test_flipped_head_passes_the_heads_own_parameters_through():
    flipped = flips.Flipped(heads.make_head("mlp"), "train")
    assert flipped.sweep is heads.get_head_class("mlp").sweep and flipped.holdout.fraction == "validation_fraction"
    flipped.set_params(l2=0.01, mode="average")
    assert flipped.get_params()["l2"] == 0.01 and flipped.estimator.l2 == 0.01 and flipped.mode == "average"
    assert not hasattr(flips.Flipped(heads.make_head("knn")), "to_keras")


# --- the command line -------------------------------------------------------------------------


def test_cli_extract_tta_and_fit_flip(root):
    runner = CliRunner()
    done = runner.invoke(main, ["extract", "--dataset", "synthetic:n=30", *SMALL])
    assert done.exit_code == 0
    refused = runner.invoke(main, ["fit", "--flip", "train", "--folds", "2"])
    assert refused.exit_code != 0 and "Traceback" not in refused.output
    last = refused.output.strip().splitlines()[-1]
    assert last.startswith("error: ") and "no flip features" in last and "--flip train" in last

    done = runner.invoke(main, ["extract", "--dataset", "synthetic:n=30", "--tta", "flip", *SMALL])
    assert done.exit_code == 0 and "each image and its flip" in done.output, done.output
    listing = runner.invoke(main, ["cache", "ls"]).output
    assert listing.count("(tta flip)") == 1
    stem = next(p for p in (root / "features").glob("*.h5") if cache.FeatureCache(p).flip).stem
    assert "tta: flip (features: features, features_flip)" in runner.invoke(main, ["cache", "info", stem]).output
    for mode in ("train", "ignore"):
        fitted = runner.invoke(main, ["fit", "--cache", stem, "--flip", mode, "--folds", "2", "--label", "coarse"])
        assert fitted.exit_code == 0, fitted.output
    assert [r["features"]["flip"] for r in records.list_records(root)] == ["train", "ignore"]
    bad = runner.invoke(main, ["extract", "--dataset", "synthetic:n=30", "--tta", "mirror", *SMALL])
    assert bad.exit_code != 0 and bad.output.strip().splitlines()[-1].startswith("error: ")


# --- predict and export -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, small_spec):
    """Images of 3 classes extracted with tta flip and flip-mean (and flip with max pooling, to fuse), and records
    fitted on them."""
    base = tmp_path_factory.mktemp("flip-predict")
    root = base / "cache"
    dataset = load_dataset(f"folder:{write_classes(base / 'images', CLASSES, 6)}")
    found = {tta: cache.FeatureCache(extract(dataset, small_spec, root, progress=False, tta=tta).path)
             for tta in ("flip", "flip-mean")}
    found["max"] = cache.FeatureCache(extract(dataset, replace(small_spec, pooling="max"), root, progress=False,
                                              tta="flip").path)
    fit = dict(folds=2, root=root, progress=False)

    def fitted_on(caches, name="logreg", **options):
        head = heads.make_head(name, **({"epochs": 3} if name == "mlp" else {}))
        return cv.fit_heads({name: head}, cv.load_features([found[c] for c in caches]), **fit, **options)[0]

    saved = {"logreg": fitted_on(["flip"]), "mlp": fitted_on(["flip"], "mlp"),
             "ignore": fitted_on(["flip"], flip="ignore"), "mean": fitted_on(["flip-mean"]),
             "fused": fitted_on(["flip", "max"]), "fused-mlp": fitted_on(["flip", "max"], "mlp")}
    paths = [str(p) for p in dataset.splits["all"].images.paths]
    return {"records": {k: records.load_record(r["id"], root) for k, r in saved.items()}, "paths": paths,
            "images": base / "images", "caches": found}


def by_hand(record, features: np.ndarray, paths):
    """path -> the saved head's probabilities on ``features``, each a list of views to average."""
    head = heads.load_head(f"{record['_folder']}/{record['model_file']}")
    return dict(zip(paths, np.mean([head.predict_proba(view) for view in features], axis=0)))


@pytest.mark.backends
@pytest.mark.parametrize("name", ["logreg", "mlp", "ignore", "mean", "fused", "fused-mlp"])
def test_predict_of_a_flip_record_averages_as_the_fit_did(fitted, name):
    record, found = fitted["records"][name], fitted["caches"]
    views = {"logreg": [found["flip"].features("all"), found["flip"].features("all", flip=True)],
             "ignore": [found["flip"].features("all")], "mean": [found["flip-mean"].features("all")],
             "fused": [np.hstack([found[c].features("all", flip=flip) for c in ("flip", "max")])
                       for flip in (False, True)]}
    views["mlp"], views["fused-mlp"] = views["logreg"], views["fused"]
    expected = by_hand(record, views[name], fitted["paths"])
    got, _ = all_probabilities(record, [fitted["images"]])
    assert set(got) == set(expected)
    for path, probabilities in got.items():
        np.testing.assert_allclose(probabilities, expected[path], atol=1e-5)


@pytest.mark.backends
@pytest.mark.parametrize("name, files", [("logreg", {"backbone.keras", "head.joblib"}), ("mlp", {"model.keras"}),
                                         ("fused", {"backbone.keras", "head.joblib"}), ("fused-mlp", {"model.keras"})])
def test_an_exported_flip_model_averages_like_predict(fitted, name, files, tmp_path):
    record = fitted["records"][name]
    folder = export(record, tmp_path / "exported")
    assert files | {"manifest.json"} == {p.name for p in folder.iterdir()}
    expected, _ = all_probabilities(record, [fitted["images"]])
    paths = sorted(expected)
    np.testing.assert_allclose(load_model(folder).predict_proba(paths), np.stack([expected[p] for p in paths]),
                               atol=1e-5)


def test_fusing_a_flip_cache_with_one_without_flips_uses_plain_features_only(fitted):
    found = fitted["caches"]
    mixed = cv.load_features([found["flip"], found["flip-mean"]])
    assert not mixed.paired and mixed.x_train.shape[1] == 2 * found["flip"].width
    with pytest.raises(ParameterError, match="not every fused cache has flip features"):
        cv.fit_heads({"logreg": heads.make_head("logreg")}, mixed, folds=2, progress=False)
    assert fitted["records"]["fused"]["features"]["parts"][1]["flip"] == "average"
    assert fitted["records"]["fused"]["approach"].endswith("-max-random0 +flip")


@pytest.mark.parametrize("name, fraction", [("svm", "calibration_fraction"), ("mlp", "validation_fraction"),
                                            ("xgboost", "validation_fraction")])
def test_flip_training_holds_out_an_image_with_its_flip(name, fraction, monkeypatch):
    """A head's own held-out slice (svm calibration, mlp and xgboost early stopping) takes an image and its flip
    together when it trains on both: no image's flip trains the head that is calibrated or stopped on it."""
    from featcache.heads import base
    from featcache.heads.registry import make_head

    module = type(make_head(name)).__module__
    slices, real = [], base.validation_slice
    monkeypatch.setattr(f"{module}.validation_slice", lambda *a: slices.append(real(*a)) or slices[-1])
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    paired = np.hstack([rng.normal(size=(60, 6)) + y[:, None], rng.normal(size=(60, 6)) + y[:, None]]).astype(np.float32)
    params = {"epochs": 2} if name == "mlp" else {}
    flips.Flipped(make_head(name, **{fraction: 0.2}, **params), "train").fit(paired, y)
    (fit_rows, held_rows), = slices
    images = np.unique(held_rows % 60)
    assert len(images) and sorted(held_rows) == sorted(np.concatenate([images, images + 60]))  # with their flips
    assert not set(fit_rows % 60) & set(images)  # no image on both sides
