"""KerasHub presets as backbones: tiny random DINOv2, ViT, CLIP and SigLIP presets saved into folders, then
described, built, fine-tuned, extracted, predicted and exported like any backbone (no network)."""

import re
import sys

import keras
import keras_hub  # the hub extra is part of the test install: a missing keras-hub fails here, it never skips
import numpy as np
import pytest
from conftest import write_images

from featcache import cache, cv, heads, records
from featcache.backbones import BackboneSpec, build_feature_model, make_spec, weights_sha256
from featcache.datasets import load_dataset
from featcache.errors import FeatcacheError, ParameterError
from featcache.compute import resolve
from featcache.export import export, load_model
from featcache.images import affine_preprocessing
from featcache.extract import extract
from featcache.finetune import finetune, nested_layers, unfreeze_top_blocks
from featcache.predict import predict
from featcache.settings import FinetuneSettings, TrainOptions

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
NORMALISED = {"scale": list(1 / (255 * STD)), "offset": list(-MEAN / STD)}


def tiny(family: str):
    """(backbone, image converter) of a family, tiny and random."""
    models, layers = keras_hub.models, keras_hub.layers
    if family == "dinov2":
        return (models.DINOV2Backbone(patch_size=14, num_layers=2, hidden_dim=16, num_heads=2, intermediate_dim=32,
                                      num_register_tokens=1, image_shape=(28, 28, 3),
                                      position_embedding_shape=(28, 28, 3)),
                layers.DINOV2ImageConverter(image_size=(28, 28), **NORMALISED))
    if family == "vit":
        return (models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                                   mlp_dim=32),
                layers.ViTImageConverter(image_size=(32, 32), scale=1 / 127.5, offset=-1.0))
    text = dict(vocabulary_size=50, embedding_dim=16, hidden_dim=16, num_layers=1, num_heads=2, intermediate_dim=32,
                max_sequence_length=8)
    vision = dict(patch_size=8, hidden_dim=16, num_layers=2, num_heads=2, intermediate_dim=32, image_shape=(32, 32, 3))
    if family == "clip":
        return (models.CLIPBackbone(models.CLIPVisionEncoder(**vision), models.CLIPTextEncoder(**text),
                                    projection_dim=12),
                layers.CLIPImageConverter(image_size=(32, 32), **NORMALISED))
    return (models.SigLIPBackbone(models.SigLIPVisionEncoder(**vision), models.SigLIPTextEncoder(**text)),
            layers.SigLIPImageConverter(image_size=(32, 32), scale=1 / 127.5, offset=-1.0))


def save_preset(folder, family: str, seed: int = 0):
    keras.utils.set_random_seed(seed)
    for part in tiny(family):
        part.save_to_preset(str(folder))
    return folder


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    base = tmp_path_factory.mktemp("presets")
    return {family: save_preset(base / f"tiny_{family}", family) for family in ("dinov2", "vit", "clip", "siglip")}


# family -> (default pooling, every pooling with its width, size, number of transformer blocks)
FAMILIES = {
    "dinov2": ("cls+mean", {"cls+mean": 32, "cls": 16, "mean": 16}, 28, 2),
    "vit": ("cls", {"cls": 16, "mean": 16, "cls+mean": 32}, 32, 2),
    "clip": ("projected", {"projected": 12, "pooled": 16}, 32, 2),
    "siglip": ("pooled", {"pooled": 16}, 32, 2),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_preset_is_a_backbone(presets, family):
    default, widths, size, blocks = FAMILIES[family]
    spec = make_spec(f"hub:{presets[family]}")
    assert (spec.name, spec.preset, spec.pooling, spec.weights, spec.input_size) == \
        (f"hub.tiny_{family}", str(presets[family]), default, "preset", size)
    for pooling, width in widths.items():
        model = build_feature_model(make_spec(f"hub:{presets[family]}", pooling=pooling))
        assert model.output_shape == (None, width)
    with pytest.raises(ParameterError, match=re.escape(f"pooling='avg' must be {'one of ' * (len(widths) > 1)}{', '.join(widths)}")):
        make_spec(f"hub:{presets[family]}", pooling="avg")

    # preprocessing: the preset's own image converter, less its resize, and per-pixel affine for export
    pixels = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    converter = keras_hub.layers.ImageConverter.from_preset(str(presets[family]))
    ours = np.asarray(spec.backbone.preprocess_input()(pixels))
    np.testing.assert_allclose(ours, np.asarray(converter(pixels)), atol=1e-4)
    kernel, bias = affine_preprocessing(spec.backbone.preprocess_input())
    np.testing.assert_allclose(pixels @ kernel + bias, ours, atol=1e-3)

    # fine-tuning: unfreeze=1 trains the last transformer block (and what follows it), nothing below it
    model = build_feature_model(spec)
    block_names = [layer.name for layer, _ in nested_layers(model) if any(
        re.match(p, layer.name) for p in spec.backbone.blocks)]
    assert len(block_names) == len(spec.backbone.blocks) == blocks
    unfreeze_top_blocks(model, spec.backbone, 1)
    trained = {v.path for v in model.trainable_weights}
    assert any(block_names[-1] in path.split("/") for path in trained)
    assert not any(block_names[0] in path.split("/") for path in trained)
    with pytest.raises(ParameterError, match="unfreeze=3 must be between 0 and the 2 blocks"):
        unfreeze_top_blocks(model, spec.backbone, 3)


def test_input_size_where_the_model_interpolates(presets):
    assert build_feature_model(make_spec(f"hub:{presets['dinov2']}", 42, "cls")).output_shape == (None, 16)
    with pytest.raises(ParameterError, match="input_size=40 must be an integer >= 14 and a multiple of the patch size 14"):
        make_spec(f"hub:{presets['dinov2']}", 40)
    with pytest.raises(ParameterError, match="input_size=64 must be 32$"):
        make_spec(f"hub:{presets['vit']}", 64)


def test_record_round_trip_and_cache_key(presets, tmp_path):
    spec = make_spec(f"hub:{presets['vit']}", pooling="mean")
    record = spec.to_record()
    assert record["preset"] == str(presets["vit"]) and BackboneSpec.from_record(record) == spec
    assert BackboneSpec.from_record({**record, "weights": "none"}).weights == "none"

    # the same preset name with other weights: another hash, another cache key
    other = make_spec(f"hub:{save_preset(tmp_path / 'tiny_vit', 'vit', seed=1)}", pooling="mean")
    assert other.name == spec.name and weights_sha256(other) != weights_sha256(spec) is not None
    keys = {cache.cache_key("data", s, weights_sha256(s), "float32", resolve()) for s in (spec, other)}
    assert len(keys) == 2


def test_extract_predict_export(presets, tmp_path, root):
    for i, name in enumerate(["a", "b"]):
        write_images(tmp_path / "images" / name, 6, size=(30, 26), seed=i)
    dataset = load_dataset(f"folder:{tmp_path / 'images'}")
    spec = make_spec(f"hub:{presets['dinov2']}")
    found = cache.FeatureCache(extract(dataset, spec, root, batch_size=4, progress=False).path)
    assert found.width == 32 and found.provenance["backbone"]["preset"] == str(presets["dinov2"])
    saved = cv.fit_heads({"logreg": heads.make_head("logreg")}, cv.load_features(found), folds=2, root=root,
                         progress=False)
    record = records.load_record(saved[0]["id"], root)
    predicted, _ = predict(record, [tmp_path / "images"], top_k=2, progress=False)
    probabilities = {str(p.path): dict(zip(p.classes, p.probabilities))["a"] for p in predicted}
    split = found.splits[0]
    head = heads.load_head(f"{record['_folder']}/{record['model_file']}")
    expected = head.predict_proba(found.features(split))[:, 0]
    np.testing.assert_allclose([probabilities[str(p)] for p in dataset.splits[split].images.paths], expected,
                               atol=1e-4)
    exported = load_model(export(record, tmp_path / "exported"))
    paths = [str(p) for p in dataset.splits[split].images.paths]
    np.testing.assert_allclose(exported.predict_proba(paths)[:, 0], expected, atol=1e-4)


def test_without_keras_hub_one_line_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_hub", None)
    with pytest.raises(FeatcacheError, match=r"^hub: backbones need keras-hub: pip install 'featcache\[hub\]'$"):
        make_spec("hub:dinov2_base")


def test_finetune_the_last_transformer_block_then_predict(presets, tmp_path, root):
    for split in ("train", "test"):
        for i, name in enumerate(["a", "b"]):
            write_images(tmp_path / "images" / split / name, 6, size=(30, 26), seed=i + 2 * (split == "test"))
    settings = FinetuneSettings(epochs=1, finetune_epochs=1, unfreeze=1, batch_size=4, augment=False)
    record = finetune(load_dataset(f"folder:{tmp_path / 'images'}"), make_spec(f"hub:{presets['vit']}"), settings,
                      options=TrainOptions(val_split=0.25, patience=0), root=root, progress=False)
    assert record["model"]["backbone"]["preset"] == str(presets["vit"])
    predicted, _ = predict(records.load_record(record["id"], root), [tmp_path / "images" / "test"], top_k=1,
                           progress=False)
    assert len(list(predicted)) == 12
