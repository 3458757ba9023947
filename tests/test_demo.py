"""`featcache demo`: ImageNet weights when Keras can load them, else one line and random weights."""

import shutil

import pytest
from conftest import SHARED_DATA

from featcache import demo
from featcache.backbones import imagenet_weights_path, make_spec

WEIGHTS_224 = SHARED_DATA / "keras" / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"


@pytest.fixture
def quick(monkeypatch):
    """The demo's extraction for real; its fitting and report reduced to recording what they were given."""
    fitted = {}
    monkeypatch.setattr(demo, "fit_heads", lambda estimators, features, **kw: fitted.update(
        heads=sorted(estimators), rows=len(features.y_train), **kw) or [])
    monkeypatch.setattr(demo, "build_report", lambda records, out_dir: None)
    return fitted


def test_offline_it_says_so_in_one_line_and_uses_random_weights(root, keras_home, quick):
    said = []
    extracted, _, _ = demo.run_demo(root, say=said.append, progress=False)
    assert len(said) == 1 and "cannot be downloaded" in said[0] and "random weights" in said[0]
    assert "-32-" in extracted.path.name and quick["heads"] == ["knn", "logreg", "mlp", "svm", "xgboost"]
    assert quick["folds"] == 6 and quick["test"] and quick["rows"] == 1437


@pytest.mark.skipif(not WEIGHTS_224.is_file(), reason=f"needs the real MobileNetV2 weights in {WEIGHTS_224.parent}")
def test_with_imagenet_weights_at_hand_it_uses_them_silently(root, keras_home, quick):
    target = imagenet_weights_path(make_spec(**demo.PRETRAINED))  # Keras' own file name for 96 px
    assert target.parent == keras_home / "models"
    shutil.copy(WEIGHTS_224, target)  # no-top convolution weights do not depend on the input size
    said = []
    extracted, _, _ = demo.run_demo(root, say=said.append, progress=False)
    assert said == [] and "-96-" in extracted.path.name
