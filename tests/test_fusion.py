"""Fused caches: the features of several caches of the same images side by side, checked row for row, fitted,
recorded with every cache's provenance, and rebuilt pipeline by pipeline by predict, evaluate and export."""

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_cache, write_images

from featcache import cv, heads, records
from featcache.backbones import make_spec
from featcache.cache import FeatureCache
from featcache.cli import main
from featcache.datasets import load_dataset
from featcache.errors import FeatcacheError
from featcache.evaluate import evaluate
from featcache.export import export, load_model
from featcache.extract import extract
from featcache.predict import predict
from featcache.report import build_report

CLASSES = ["blue", "green", "red"]
SPEC_32 = make_spec("mobilenetv2", input_size=32, weights="none", options={"alpha": 0.35})
SPEC_48 = make_spec("mobilenetv2", input_size=48, weights="none", options={"alpha": 0.35})


def pair(root, n=60, widths=(8, 5), dtypes=("float32", "float32"), fingerprints=("same", "same"), y_other=None,
         n_other=None, classes_other=None):
    """Two caches of (by default) the same images: other backbones' widths, the same labels and fingerprint."""
    rng = np.random.default_rng(0)
    y, y_test = np.arange(n) % 3, np.arange(12) % 3
    made = []
    for i, spec in enumerate((SPEC_32, SPEC_48)):
        rows = n if i == 0 or n_other is None else n_other
        labels = y if i == 0 or y_other is None else y_other
        x = (rng.normal(size=(rows, widths[i])) + labels[:rows, None]).astype(np.float32)
        x_test = rng.normal(size=(12, widths[i])).astype(np.float32)
        made.append(write_cache(root, x, labels[:rows], x_test, y_test, spec=spec, fingerprint=fingerprints[i],
                                dtype=dtypes[i], class_names=(classes_other if i and classes_other else CLASSES)))
    return made


def test_fused_features_are_each_cache_s_columns_side_by_side(root):
    a, b = pair(root)
    fused = cv.load_features([a, b])
    assert fused.caches == [a, b] and fused.x_train.shape == (60, 13) and fused.x_train.dtype == np.float32
    for split, x in (("train", fused.x_train), ("test", fused.x_test)):
        np.testing.assert_array_equal(x[:, :8], a.features(split))
        np.testing.assert_array_equal(x[:, 8:], b.features(split))
    np.testing.assert_array_equal(fused.y_train, a.labels("train", "label"))
    np.testing.assert_array_equal(cv.load_features([b, a]).x_test, np.hstack([b.features("test"), a.features("test")]))
    single = cv.load_features(a)
    assert single.caches == [a] and np.array_equal(single.x_train, a.features("train"))


@pytest.mark.parametrize("dtypes, fused", [(("float16", "float16"), np.float16), (("float16", "float32"), np.float32)])
def test_float16_stays_float16_only_when_every_cache_is(root, dtypes, fused):
    a, b = pair(root, dtypes=dtypes)
    x = cv.load_features([a, b]).x_train
    assert x.dtype == fused
    np.testing.assert_array_equal(x, np.hstack([a.features("train"), b.features("train")]).astype(fused))


def test_fused_caches_of_different_images_are_refused(root):
    a, b = pair(root, fingerprints=("images-one", "images-two"))
    with pytest.raises(FeatcacheError, match="other images"):
        cv.load_features([a, b])
    result = CliRunner().invoke(main, ["fit", "--head", "logreg", "--folds", "2", "--cache", a.path.stem,
                                       "--cache", b.path.stem])
    last = result.output.strip().splitlines()[-1]
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert last.startswith("error: cannot fuse") and a.path.name in last and b.path.name in last
    assert "dataset fingerprint images-one vs images-two" in last and "extract each backbone from the same" in last
    assert not records.list_records(root)


@pytest.mark.parametrize("other, message", [
    ({"n_other": 57}, r"their splits differ \(train 60, test 12 vs train 57, test 12\)"),
    ({"y_other": np.roll(np.arange(60) % 3, 1)}, "their 'label' labels of the train split differ row by row"),
    ({"classes_other": ["b", "g", "r"]}, r"their label sets differ \(label \(3 classes\) vs label \(3 classes\)\)"),
])
def test_other_rows_or_labels_are_refused(root, other, message):
    a, b = pair(root, **other)
    with pytest.raises(FeatcacheError, match=f"cannot fuse {a.path.name} with {b.path.name}: {message}"):
        cv.load_features([a, b])


def test_a_cache_given_twice_is_refused(root):
    a, b = pair(root)
    with pytest.raises(FeatcacheError, match="is given twice"):
        cv.load_features([a, FeatureCache(a.path)])
    with pytest.raises(FeatcacheError, match=f"{b.path.name} is given twice"):
        cv.load_features([a, b, FeatureCache(b.path)])


def test_a_fused_record_keeps_every_provenance_and_reports(root, tmp_path):
    a, b = pair(root)
    fit = {"estimators": {"logreg": heads.make_head("logreg")}, "folds": 2, "root": root, "progress": False}
    fused = cv.fit_heads(features=cv.load_features([a, b]), **fit)[0]
    loaded = records.load_record(fused["id"], root)
    parts = loaded["features"]["parts"]
    assert [p["cache_key"] for p in parts] == [a.key, b.key]
    assert [p["backbone"] for p in parts] == [SPEC_32.to_record(), SPEC_48.to_record()]
    assert [p["cache_file"] for p in parts] == [str(a.path), str(b.path)]
    assert loaded["approach"] == ("logreg on mobilenetv2(alpha=0.35)-32-avg-random0 + "
                                  "mobilenetv2(alpha=0.35)-48-avg-random0")
    assert [p["input_size"] for p in records.pipelines(loaded)] == [32, 48]
    others = [cv.fit_heads(features=cv.load_features(caches), **fit)[0] for caches in ([b, a], [a])]
    assert len({records.fit_settings(r) for r in [loaded, *others]}) == 3  # order and parts make the fit
    rerun = cv.fit_heads(features=cv.load_features([a, b]), **fit)[0]
    assert rerun["_replaced"] == [fused["id"]]
    built = build_report(records.list_records(root), tmp_path / "report")
    text = built.markdown.read_text()
    assert "| logreg on mobilenetv2(alpha=0.35)-32-avg-random0 + mobilenetv2(alpha=0.35)-48-avg-random0 | head |" \
           " mobilenetv2 (alpha=0.35) | none | — | 32 |" in text
    assert f"| 48 | avg | {b.key} |" in text


def test_finetune_refuses_to_start_from_a_fused_head(root):
    from featcache.finetune import init_head_file

    a, b = pair(root)
    record = cv.fit_heads({"mlp": heads.make_head("mlp", epochs=1)}, cv.load_features([a, b]), folds=2, root=root,
                          progress=False)[0]
    with pytest.raises(FeatcacheError, match="fitted on 2 fused caches"):
        init_head_file(record, SPEC_32, "same", "label")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Images of 3 classes extracted at two input sizes, and logreg and mlp heads fitted on both fused (CLI)."""
    base = tmp_path_factory.mktemp("fusion")
    for i, name in enumerate(CLASSES):
        write_images(base / "images" / name, 8, size=(20, 20) if i else (24, 18), seed=i)
    root = base / "cache"
    dataset = load_dataset(f"folder:{base / 'images'}")
    caches = [FeatureCache(extract(dataset, spec, root, progress=False).path) for spec in (SPEC_32, SPEC_48)]
    result = CliRunner().invoke(main, ["--cache-dir", str(root), "fit", "--head", "logreg,mlp", "--folds", "2",
                                       "--cache", caches[0].path.stem, "--cache", caches[1].path.stem])
    assert result.exit_code == 0, result.output
    split = caches[0].splits[0]
    paths = [str(p) for p in dataset.splits[split].images.paths]
    concatenated = np.hstack([c.features(split) for c in caches])
    return {"root": root, "records": {r["head"]: r for r in records.list_records(root)}, "images": base / "images",
            "features": dict(zip(paths, concatenated)), "dataset": dataset}


def probabilities_by_path(record, images):
    found, _ = predict(record, [images], top_k=len(CLASSES), progress=False)
    return {str(p.path): np.array([dict(zip(p.classes, p.probabilities))[c] for c in CLASSES]) for p in found}


@pytest.mark.parametrize("head_name", ["logreg", "mlp"])
def test_predict_evaluate_and_export_rebuild_every_pipeline(fitted, head_name, tmp_path):
    record = fitted["records"][head_name]
    assert len(record["features"]["parts"]) == 2
    head = heads.load_head(f"{record['_folder']}/{record['model_file']}")
    predicted = probabilities_by_path(record, fitted["images"])
    paths = sorted(predicted)
    assert paths == sorted(fitted["features"])
    expected = head.predict_proba(np.stack([fitted["features"][p] for p in paths]))
    np.testing.assert_allclose(np.stack([predicted[p] for p in paths]), expected, atol=1e-5)

    scored = evaluate(record, fitted["dataset"], root=tmp_path)
    labels = fitted["dataset"].splits[fitted["dataset"].train_split].labels["label"]
    by_path = dict(zip(map(str, fitted["dataset"].splits[fitted["dataset"].train_split].images.paths), labels))
    hits = [CLASSES[np.argmax(predicted[p])] == CLASSES[by_path[p]] for p in paths]
    assert scored["test"]["accuracy"] == pytest.approx(np.mean(hits))

    exported = load_model(export(record, tmp_path / "exported"))
    assert exported.manifest["input_size"] == [32, 48]
    np.testing.assert_allclose(exported.predict_proba(paths), np.stack([predicted[p] for p in paths]), atol=1e-5)
