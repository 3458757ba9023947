"""predict and export: a record's model applied to new images, and shipped as a folder."""

import json
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_classes

from featcache import heads
from featcache.cli import main
from featcache import cv, records
from featcache.backbones import build_feature_model, make_spec
from featcache.cache import FeatureCache
from featcache.datasets import load_dataset
from featcache.errors import FeatcacheError, ParameterError
from featcache.export import export
from featcache.extract import extract
from featcache.predict import predict

CLASSES = ["blue", "green", "red"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, small_spec):
    """Images of 3 classes, their features (local weights file), and logreg and mlp records with saved heads."""
    base = tmp_path_factory.mktemp("predict")
    write_classes(base / "images", CLASSES, 8)
    weights = base / "mine.weights.h5"
    build_feature_model(replace(small_spec, seed=5)).save_weights(weights)
    spec = make_spec("mobilenetv2", 32, weights=str(weights), options={"alpha": 0.35})
    root = base / "cache"
    dataset = load_dataset(f"folder:{base / 'images'}")
    cache = FeatureCache(extract(dataset, spec, root, progress=False).path)
    features = cv.load_features(cache)
    estimators = {name: heads.make_head(name) for name in ("logreg", "mlp")}
    saved = cv.fit_heads(estimators, features, folds=2, root=root, progress=False)
    split = cache.splits[0]
    paths = [str(p) for p in dataset.splits[split].images.paths]
    return {"root": root, "records": {r["head"]: records.load_record(r["id"], root) for r in saved},
            "features": dict(zip(paths, cache.features(split))), "images": base / "images"}


def all_probabilities(record, inputs, **options):
    """path -> probabilities in class order, from featcache.predict with every class ranked."""
    found, skipped = predict(record, inputs, top_k=len(CLASSES), progress=False, **options)
    return {str(p.path): np.array([dict(zip(p.classes, p.probabilities))[c] for c in CLASSES]) for p in found}, skipped


@pytest.mark.backends
@pytest.mark.parametrize("head_name", ["logreg", "mlp"])
def test_predict_reproduces_the_cached_feature_predictions(fitted, head_name):
    record = fitted["records"][head_name]
    head = heads.load_head(f"{record['_folder']}/{record['model_file']}")
    predicted, skipped = all_probabilities(record, [fitted["images"]])
    assert skipped == [] and set(predicted) == set(fitted["features"])
    for path, probabilities in predicted.items():
        expected = head.predict_proba(fitted["features"][path][None])[0]
        np.testing.assert_allclose(probabilities, expected, atol=1e-5)


@pytest.mark.backends
@pytest.mark.parametrize("head_name, files", [("logreg", {"backbone.keras", "head.joblib"}), ("mlp", {"model.keras"})])
def test_exported_model_loads_in_a_fresh_process_and_agrees(fitted, head_name, files, tmp_path):
    record = fitted["records"][head_name]
    folder = export(record, tmp_path / "exported")
    assert files | {"manifest.json"} == {p.name for p in folder.iterdir()}
    predicted, _ = all_probabilities(record, [fitted["images"]])
    paths = sorted(predicted)
    script = ("import json, sys, numpy, featcache; m = featcache.load_model(sys.argv[1]); images = json.loads(sys.argv[2]); "
              "print(json.dumps([m.predict_proba(images).tolist(), m.predict(images).tolist()]))")
    done = subprocess.run([sys.executable, "-c", script, str(folder), json.dumps(paths)], capture_output=True,
                          text=True, check=True, env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": ""}, cwd=tmp_path)
    exported, names = json.loads(done.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(np.array(exported), np.stack([predicted[p] for p in paths]), atol=1e-5)
    assert names == [CLASSES[i] for i in np.argmax(exported, axis=1)]  # class names, as scikit-learn's predict


def test_exported_folder_refuses_changed_files(fitted, tmp_path):
    from featcache import load_model

    folder = export(fitted["records"]["logreg"], tmp_path / "exported")
    with open(folder / "head.joblib", "ab") as f:
        f.write(b"\0")
    with pytest.raises(FeatcacheError, match="changed since it was exported"):
        load_model(folder)
    with pytest.raises(FeatcacheError, match="is not empty"):
        export(fitted["records"]["logreg"], folder)


def test_refusals(fitted, tmp_path):
    record = fitted["records"]["logreg"]
    with pytest.raises(FeatcacheError, match="has no saved model"):
        predict({**record, "model_file": None}, [fitted["images"]])
    moved = {**record, "features": {**record["features"], "weights_sha256": "0" * 64}}
    with pytest.raises(FeatcacheError, match="restore that weights file or fit again"):
        predict(moved, [fitted["images"]])
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(FeatcacheError, match="broken.png"):
        all_probabilities(record, [fitted["images"], bad])
    predicted, skipped = all_probabilities(record, [fitted["images"], bad], skip_bad=True)
    assert [str(p) for p in skipped] == [str(bad)] and len(predicted) == len(fitted["features"])


def test_cli_predict_best_writes_a_csv(fitted, tmp_path, monkeypatch):
    monkeypatch.setenv("FEATCACHE_CACHE", str(fitted["root"]))
    out = tmp_path / "predictions.csv"
    result = CliRunner().invoke(main, ["predict", str(fitted["images"] / "red"), "--top-k", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "best record:" in result.output and "8 predictions written" in result.output
    lines = out.read_text().splitlines()
    assert lines[0] == "path,class1,probability1,class2,probability2" and len(lines) == 9
    assert lines[1].split(",")[1] in CLASSES
    missing = CliRunner().invoke(main, ["predict", str(tmp_path / "nothing-*.png")])
    assert missing.exit_code == 2 and "no image matches" in missing.output


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "--batch-size"), (["--batch-size", "-4"], "--batch-size"), (["--top-k", "0"], "--top-k")])
def test_cli_predict_refuses_bad_numbers(fitted, tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("FEATCACHE_CACHE", str(fitted["root"]))
    out = tmp_path / "p.csv"
    result = CliRunner().invoke(main, ["predict", str(fitted["images"] / "red"), "--out", str(out), *args])
    assert result.exit_code == 2 and message in result.output and not out.exists()
    with pytest.raises(ParameterError, match="batch_size=0"):
        predict(fitted["records"]["logreg"], [fitted["images"]], batch_size=0)


def test_top_k_is_capped_at_the_classes(fitted, tmp_path, monkeypatch):
    monkeypatch.setenv("FEATCACHE_CACHE", str(fitted["root"]))
    out = tmp_path / "p.csv"
    result = CliRunner().invoke(main, ["predict", str(fitted["images"] / "red"), "--top-k", "10", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = [line.split(",") for line in out.read_text().splitlines()]
    assert rows[0] == ["path"] + [f"{kind}{i}" for i in (1, 2, 3) for kind in ("class", "probability")]
    assert {len(row) for row in rows} == {7}


def run_without_tensorflow(args, root):
    """Run the CLI in a fresh process; (exit code, whether TensorFlow got imported)."""
    script = ("import json, sys; from featcache.cli import main; code = main(json.loads(sys.argv[1]), "
              "standalone_mode=False); print(json.dumps([code, 'tensorflow' in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", script, json.dumps(args)], capture_output=True, text=True,
                          env={"FEATCACHE_CACHE": str(root), "PATH": ""})
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    return (*json.loads(done.stdout.strip().splitlines()[-1]), done.stderr)


def test_bad_paths_fail_before_tensorflow_loads(fitted, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    images = str(fitted["images"] / "red")
    for args, message in [(["predict", images, "--out", str(blocker / "p.csv")], "a-file"),
                          (["predict", images, str(tmp_path / "missing.png")], "missing.png"),
                          (["export", "--out", str(tmp_path)], "is not empty")]:
        code, tensorflow, stderr = run_without_tensorflow(args, fitted["root"])
        assert code == 2 and not tensorflow and message in stderr, stderr


def test_garbage_model_file_is_one_clear_line(fitted, tmp_path):
    for head_name in ("logreg", "mlp"):
        record = fitted["records"][head_name]
        folder = tmp_path / head_name
        shutil.copytree(record["_folder"], folder)
        (folder / record["model_file"]).write_bytes(b"garbage")
        with pytest.raises(FeatcacheError, match=f"{folder / record['model_file']}.*fit it again"):
            predict({**record, "_folder": str(folder)}, [fitted["images"]])
