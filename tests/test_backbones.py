"""The backbone registry: every entry builds as its committed facts say."""

import numpy as np
import pytest

from featcache.backbone_facts import FACTS
from featcache.backbones import BACKBONES, build_feature_model, describe, make_spec
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
