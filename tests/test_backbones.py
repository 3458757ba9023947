"""The backbone registry: every entry builds as its committed facts say, and its options are checked up front."""

import json
from dataclasses import asdict

import keras
import numpy as np
import pytest

from featcache.backbone_facts import FACTS
from featcache.backbones import BACKBONES, BackboneSpec, build_feature_model, describe, make_spec
from featcache.errors import FeatcacheError, ParameterError
from featcache.finetune import block_starts


@pytest.mark.parametrize("name", BACKBONES)
def test_entry_builds_as_its_facts_say(name):
    """At the minimum size, with random weights: pooled width and parameter count do not depend on the size."""
    backbone = BACKBONES[name]
    model = build_feature_model(make_spec(name, backbone.min_size, weights="none"))
    assert model.output_shape[-1] == FACTS[name]["width"]
    assert model.count_params() == FACTS[name]["parameters"]
    pixels = np.random.default_rng(0).uniform(0, 255, (2, backbone.min_size, backbone.min_size, 3)).astype("float32")
    preprocessed = np.asarray(backbone.preprocess_input()(pixels.copy()))
    assert preprocessed.shape == pixels.shape and np.isfinite(preprocessed).all()
    starts = block_starts(name, model.layers)  # raises where a pattern matches no layer
    assert starts and starts == sorted(set(starts))  # bottom to top


def test_listing_reads_the_facts():
    rows = {row["name"]: row for row in describe()}
    assert list(rows) == list(BACKBONES)
    assert rows["mobilenet"] == {"name": "mobilenet", "default_size": 224, "min_size": 32, "width": 1024,
                                 "parameters": 3228864, "options": {"alpha": 1.0}}
    assert rows["resnet50"]["options"] == {}


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
                 make_spec("resnet50", weights=str(weights)), make_spec("mobilenet")]:
        record = spec.to_record()
        assert record == {**asdict(spec), "options": dict(spec.options)} == json.loads(json.dumps(record))
        assert BackboneSpec.from_record(record) == spec
    with pytest.raises(ParameterError, match="alpha=0.3 must be one of"):
        BackboneSpec.from_record({**make_spec("mobilenet").to_record(), "options": {"alpha": 0.3}})
