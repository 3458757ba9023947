"""The backbone registry: every entry builds as its committed facts say, its options are checked up front, the
first ten keep their cache keys, and a third-party backbone plugs in through an entry point."""

import json
from dataclasses import asdict

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import install_plugin, write_images

from featcache import cache, cv, heads, records
from featcache.backbone_facts import FACTS
from featcache.backbones import (BACKBONES, BackboneSpec, build_feature_model, describe, imagenet_weights_path,
                                 keras_constants, make_spec)
from featcache.cli import main
from featcache.compute import Compute
from featcache.datasets import load_dataset
from featcache.errors import FeatcacheError, ParameterError
from featcache.export import export, load_model
from featcache.extract import extract
from featcache.finetune import block_starts
from featcache.images import affine_preprocessing
from featcache.predict import predict

# slowest to build (5-10 s each at their minimum size on 2 shared cores): deselect with -m "not slow"
SLOW = {"efficientnetv2m", "efficientnetv2l", "convnextlarge", "convnextxlarge", "nasnetlarge"}


@pytest.mark.parametrize("name", [pytest.param(name, marks=[pytest.mark.slow] if name in SLOW else [])
                                  for name in BACKBONES])
def test_entry_builds_as_its_facts_say(name):
    """At the minimum size, with random weights: pooled width and parameter count do not depend on the size."""
    backbone = BACKBONES[name]
    model = build_feature_model(make_spec(name, backbone.min_size, weights="none"))
    assert model.output_shape[-1] == FACTS[name]["width"]
    assert model.count_params() == FACTS[name]["parameters"]
    pixels = np.random.default_rng(0).uniform(0, 255, (2, backbone.min_size, backbone.min_size, 3)).astype("float32")
    preprocessed = np.asarray(backbone.preprocess_input()(pixels.copy()))
    assert preprocessed.shape == pixels.shape and np.isfinite(preprocessed).all()
    kernel, bias = affine_preprocessing(backbone.preprocess_input())  # what extraction and export fuse
    np.testing.assert_allclose(pixels @ kernel + bias, preprocessed, rtol=1e-5, atol=1e-3)
    if backbone.preprocessing_in_model:
        np.testing.assert_array_equal(preprocessed, pixels)
    starts = block_starts(name, model.layers)  # raises where a pattern matches no layer
    assert starts and starts == sorted(set(starts))  # bottom to top
    assert backbone.source().startswith("https://") and backbone.source().endswith(".h5")


# the first ten entries: Keras' weights file name and the cache key of main before the new families
FIRST_TEN = {
    'resnet50': ('resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5', 'a4ab14b6d80e29cd'),
    'resnet101': ('resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5', '56bd54ef61e68f5a'),
    'vgg16': ('vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5', '92e85ebdd473ac95'),
    'vgg19': ('vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5', '5be5af4b8ee78c6a'),
    'xception': ('xception_weights_tf_dim_ordering_tf_kernels_notop.h5', 'dda5050dfee33a68'),
    'inceptionv3': ('inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5', 'fb9f766b4f7b984b'),
    'mobilenet': ('mobilenet_1_0_224_tf_no_top.h5', '56922c0827d08db2'),
    'mobilenetv2': ('mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5', 'c2041d110c38eaed'),
    'densenet121': ('densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5', 'b000c069f72bb791'),
    'efficientnetb0': ('efficientnetb0_notop.h5', '92d9e9097f302e46'),
}


def test_first_ten_keep_their_names_files_and_cache_keys():
    assert list(BACKBONES)[:10] == list(FIRST_TEN)
    for name, (file_name, key) in FIRST_TEN.items():
        spec = make_spec(name, weights="none")
        assert imagenet_weights_path(spec).name == file_name
        assert cache.cache_key("fp", spec, "abc", "float32", Compute("tensorflow", "float32", False))[:16] == key
        assert "preset" not in spec.to_record()


@pytest.mark.parametrize("module", ["vgg16", "densenet", "nasnet", "resnet", "convnext", "inception_resnet_v2"])
def test_weights_urls_are_read_from_keras_source(module):
    """Listing reads Keras' constants from its source (importing Keras would import TensorFlow): the same values."""
    import importlib

    imported = vars(importlib.import_module(f"keras.src.applications.{module}"))
    assert keras_constants(module) == {key: imported[key] for key in keras_constants(module)}
    assert any(str(value).startswith("https://storage.googleapis.com/") for value in keras_constants(module).values())


def test_listing_reads_the_facts():
    rows = {row["name"]: row for row in describe()}
    assert list(rows) == list(BACKBONES)
    assert rows["mobilenet"] == {
        "name": "mobilenet", "default_size": 224, "min_size": 32, "width": 1024, "parameters": 3228864,
        "options": {"alpha": 1.0}, "preprocessing": "mobilenet.preprocess_input",
        "weights": "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/mobilenet_1_0_224_tf_no_top.h5"}
    assert rows["resnet50"]["options"] == {}
    assert rows["convnexttiny"]["preprocessing"] == "inside the model"
    listed = CliRunner().invoke(main, ["backbones"]).output
    assert "efficientnetv2s" in listed and "inside the model" in listed and "hub:PRESET" in listed


def test_imagenet_alpha_outside_keras_weights_fails_before_any_model(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(keras.applications, "MobileNet", lambda *args, **kwargs: pytest.fail("a model was built"))
    with pytest.raises(ParameterError) as raised:
        make_spec("mobilenet", options={"alpha": 0.35})
    assert str(raised.value) == "mobilenet with weights='imagenet': alpha=0.35 must be one of 0.25, 0.5, 0.75, 1.0"
    assert raised.value.parameter == "alpha"
    with pytest.raises(ParameterError, match="alpha=1.2 must be one of 0.35, 0.5, 0.75, 1.0, 1.3, 1.4"):
        make_spec("mobilenetv2", options={"alpha": "1.2"})
    assert not any(tmp_path.iterdir())


def test_any_positive_alpha_with_random_weights():
    spec = make_spec("mobilenet", 32, weights="none", options={"alpha": "0.3"})  # a string, as from KEY=VALUE
    assert spec.options == (("alpha", 0.3),)
    assert build_feature_model(spec).output_shape[-1] == int(1024 * 0.3)
    with pytest.raises(ParameterError, match="mobilenet: alpha=0.0 must be a number > 0"):
        make_spec("mobilenet", weights="none", options={"alpha": 0})


@pytest.mark.parametrize("name, options, message", [
    ("resnet50", {"alpha": 0.5}, "backbone resnet50 has no option 'alpha' (options: none)"),
    ("mobilenetv2", {"depth": 2}, "backbone mobilenetv2 has no option 'depth' (options: alpha)"),
])
def test_unknown_option(name, options, message):
    with pytest.raises(FeatcacheError) as raised:
        make_spec(name, weights="none", options=options)
    assert str(raised.value) == message


@pytest.mark.parametrize("arguments, parameter", [
    ({"input_size": 8}, "input_size"), ({"pooling": "sum"}, "pooling"), ({"weights": "/no/such/file.h5"}, "weights"),
])
def test_errors_name_python_parameters(arguments, parameter):
    with pytest.raises(ParameterError) as raised:
        make_spec("mobilenetv2", **arguments)
    message = str(raised.value)
    assert raised.value.parameter == parameter and f"{parameter}=" in message and "--" not in message


def test_record_round_trip(tmp_path):
    weights = tmp_path / "weights.h5"
    weights.write_bytes(b"")
    for spec in [make_spec("mobilenetv2", 48, "max", "none", {"alpha": "0.35"}, seed=3),
                 make_spec("resnet50", weights=str(weights)), make_spec("mobilenet"),
                 make_spec("resnet50", weights="none", resize="crop")]:
        record = spec.to_record()
        defaults = {"preset": "", "resize": "stretch"}  # left out when they are the default (hub only; crop only)
        fields = {key: value for key, value in asdict(spec).items() if defaults.get(key, None) != value}
        assert record == {**fields, "options": dict(spec.options)} == json.loads(json.dumps(record))
        assert BackboneSpec.from_record(record) == spec
    with pytest.raises(ParameterError, match="alpha=0.3 must be one of"):
        BackboneSpec.from_record({**make_spec("mobilenet").to_record(), "options": {"alpha": 0.3}})


PLUGIN = '''
from featcache.backend import keras
from featcache.backbones import Plugin


def build(input_shape, pooling):
    images = keras.Input(input_shape)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu", name="stage1_conv")(images)
    x = keras.layers.Conv2D(6, 3, strides=2, activation="relu", name="stage2_conv")(x)
    pool = {"avg": keras.layers.GlobalAveragePooling2D, "max": keras.layers.GlobalMaxPooling2D}[pooling]
    return keras.Model(images, pool()(x), name="tinynet")


def preprocess(batch):
    return batch / 127.5 - 1.0


backbone = Plugin(build, preprocess, default_size=24, min_size=16, weights_file="tinynet.weights.h5",
                  blocks=("stage1_", "stage2_"))
'''


def test_third_party_backbone_plugs_in_through_an_entry_point(tmp_path, monkeypatch, root):
    """A tiny package installed only for this test (a module, its weights file and its dist-info on sys.path)
    is listed, extracted, predicted and exported with; its weights file is hashed into the cache key."""
    package = install_plugin(tmp_path / "site", monkeypatch, "tinynet", PLUGIN, "featcache.backbones",
                             "tinynet = tinynet:backbone")
    import tinynet

    def save_weights(seed):
        keras.utils.set_random_seed(seed)
        tinynet.build((24, 24, 3), "avg").save_weights(package / "tinynet.weights.h5")

    save_weights(1)
    rows = {row["name"]: row for row in describe()}
    assert rows["tinynet"]["weights"] == str(package / "tinynet.weights.h5") and rows["tinynet"]["min_size"] == 16
    assert "tinynet" in CliRunner().invoke(main, ["backbones"]).output

    spec = make_spec("tinynet")
    assert (spec.input_size, spec.pooling, spec.weights) == (24, "avg", "imagenet")
    starts = block_starts(spec.backbone, build_feature_model(spec).layers)
    assert len(starts) == 2

    for i, name in enumerate(["a", "b"]):
        write_images(tmp_path / "images" / name, 6, size=(20, 20), seed=i)
    dataset = load_dataset(f"folder:{tmp_path / 'images'}")
    found = cache.FeatureCache(extract(dataset, spec, root, batch_size=4, progress=False).path)
    assert found.width == 6
    saved = cv.fit_heads({"logreg": heads.make_head("logreg")}, cv.load_features(found), folds=2, root=root,
                         progress=False)
    record = records.load_record(saved[0]["id"], root)
    split = found.splits[0]
    expected = heads.load_head(f"{record['_folder']}/{record['model_file']}").predict_proba(found.features(split))
    paths = [str(p) for p in dataset.splits[split].images.paths]
    predicted = {str(p.path): dict(zip(p.classes, p.probabilities))["a"]
                 for p in predict(record, paths, top_k=2, progress=False)[0]}
    np.testing.assert_allclose([predicted[p] for p in paths], expected[:, 0], atol=1e-5)
    exported = load_model(export(record, tmp_path / "exported"))
    np.testing.assert_allclose(exported.predict_proba(paths)[:, 0], expected[:, 0], atol=1e-5)

    save_weights(2)  # the same plug-in version with other weights: other features, another cache file
    with pytest.raises(FeatcacheError, match="weights"):
        predict(record, paths, progress=False)
    assert extract(dataset, spec, root, batch_size=4, progress=False).path != found.path
