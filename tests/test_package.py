"""The package as a user meets it: one import, a version, no TensorFlow until a stage needs it,
and files of the previous format still read."""

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_cache

import featcache
from featcache import records
from featcache.cli import main
from featcache.errors import FeatcacheError


def test_public_api_is_one_import_away():
    for name in featcache.__all__:
        assert getattr(featcache, name) is not None, name
    assert callable(featcache.load_dataset) and callable(featcache.extract_features) and callable(featcache.fit_heads)
    with pytest.raises(AttributeError):
        featcache.no_such_thing


def test_version_comes_from_the_installed_metadata():
    from importlib.metadata import version

    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output == f"featcache {version('featcache')}\n"
    assert featcache.__version__ == version("featcache")


def test_nothing_outside_featcache_is_installed():
    from importlib.metadata import distribution

    top_level = distribution("featcache").read_text("top_level.txt")
    files = [str(f) for f in distribution("featcache").files or []]
    assert top_level is None or top_level.split() == ["featcache"]
    assert not any(f.split("/")[0] in ("heads", "cli.py") for f in files)


LIGHT = """
import sys
from click.testing import CliRunner
import featcache
from featcache.cli import main
featcache.make_spec, featcache.open_cache, featcache.fit_heads, featcache.build_report, featcache.load_dataset
runs = [["--help"], ["--version"], ["cache", "ls"], ["results", "ls"], ["heads"], ["backbones"],
        ["extract", "--pooling", "median"], ["fit", "--folds", "x"]]
codes = [CliRunner().invoke(main, args).exit_code for args in runs]
heavy = sorted(m for m in ("tensorflow", "keras", "jax", "torch", "xgboost") if m in sys.modules)
print(codes, heavy)
"""


def test_import_and_commands_without_a_model_import_no_tensorflow(root):
    out = subprocess.run([sys.executable, "-c", LIGHT], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[0, 0, 0, 0, 0, 0, 2, 2] []"


def _v1(record: dict) -> dict:
    """A record as featcache-result/1 wrote it: flat backbone fields."""
    old = {**record, "format": "featcache-result/1"}
    features = dict(old["features"])
    backbone = features.pop("backbone")
    old["features"] = {**features, "backbone": backbone["name"], "backbone_args": backbone["options"],
                       "weights": backbone["weights"], "seed": backbone["seed"],
                       "input_size": backbone["input_size"], "pooling": backbone["pooling"]}
    del old["model"]
    return old


@pytest.fixture
def fitted(root):
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    x = (rng.normal(size=(60, 8)) + 3 * y[:, None]).astype(np.float32)
    found = write_cache(root, x, y)
    return featcache.fit_heads({"logreg": featcache.make_head("logreg")}, featcache.load_features(found), folds=3,
                               root=root, progress=False)[0]


@pytest.mark.parametrize("version", [1, 2])
def test_a_previous_version_record_is_migrated(root, fitted, version):
    """featcache-result/1 (flat backbone fields) and /2 (the current shape, without fused features) still load."""
    from featcache.predict import feature_specs

    path = records.record_folder(fitted["id"], root) / records.RECORD_FILE
    current = json.loads(path.read_text())
    path.write_text(json.dumps(_v1(current) if version == 1 else {**current, "format": "featcache-result/2"}))
    migrated = records.load_record(fitted["id"], root)
    assert migrated["format"] == records.FORMAT
    assert migrated["features"] == current["features"] and migrated["model"] is None
    assert [spec.to_record() for spec, _ in feature_specs(migrated)] == [current["features"]["backbone"]]
    assert records.fit_settings(migrated) == records.fit_settings(current)  # a rerun still replaces it
    assert [r["id"] for r in records.list_records(root)] == [fitted["id"]]


def test_a_record_from_a_newer_featcache_is_refused_clearly(root, fitted):
    path = records.record_folder(fitted["id"], root) / records.RECORD_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "format": "featcache-result/9"}))
    with pytest.raises(FeatcacheError, match=r"written by a newer featcache \(featcache-result/9; this one reads up to /3\)"):
        records.load_record(fitted["id"], root)


def test_a_previous_version_cache_still_reads_and_a_newer_one_is_refused(root):
    from featcache.cache import FeatureCache

    found = write_cache(root, np.ones((10, 4), np.float32), np.arange(10) % 2)
    with h5py.File(found.path, "r+") as f:
        f.attrs["format"] = "featcache-features/1"
    np.testing.assert_array_equal(FeatureCache(found.path).features("train"), np.ones((10, 4)))
    with h5py.File(found.path, "r+") as f:
        f.attrs["format"] = "featcache-features/3"
    with pytest.raises(FeatcacheError, match="newer featcache"):
        FeatureCache(found.path)


def test_a_version_1_trained_model_still_predicts(root, tmp_path):
    """featcache-result/1 saved finetune/scratch models that take resized pixels; predict adds the resize."""
    from PIL import Image

    from featcache.backend import keras
    from featcache.predict import predict

    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inputs)))
    folder = records.record_folder("20250101-000000-basic-cnn-abcdef", root)
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
    (folder / records.RECORD_FILE).write_text(json.dumps({
        "format": "featcache-result/1", "id": folder.name, "created": "2025-01-01T00:00:00+00:00",
        "kind": "scratch", "approach": "scratch basic-cnn-16", "head": "basic-cnn", "params": {},
        "dataset": {"name": "d", "fingerprint": "f", "label_set": "label", "class_names": ["a", "b"],
                    "n_train": 4, "n_test": None},
        "features": None, "model": {"backbone": "basic-cnn", "backbone_args": {}, "weights": "none",
                                    "weights_sha256": None, "input_size": 16, "pooling": None},
        "cv": {"folds": 0, "seed": 0, "fold_metrics": [], "summary": {}}, "test": None,
        "model_file": "model.keras"}))
    pixels = np.random.default_rng(0).integers(0, 255, (24, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    found, _ = predict(records.load_record(folder.name, root), [tmp_path / "x.png"], top_k=2, progress=False)
    probabilities = dict(zip(*(lambda p: (p.classes, p.probabilities))(next(found))))
    resized = keras.layers.Resizing(16, 16)(pixels[None].astype("float32"))
    expected = np.asarray(model(resized))[0]
    np.testing.assert_allclose([probabilities["a"], probabilities["b"]], expected, atol=1e-6)
