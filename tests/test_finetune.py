"""Fine-tuning: two phases on a tiny synthetic dataset, what each phase trains, records, report, CLI."""


import keras
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from featcache.cli import main
from conftest import SHARED_DATA, write_images
from featcache import records
from featcache.backbones import build_feature_model, make_spec, weights_sha256
from featcache.datasets import load_dataset
from featcache.errors import FeatcacheError
from featcache.finetune import (FinetuneRecipe, backbone_of, block_starts, finetune,
                                init_head_file)
from featcache.predict import predict
from featcache.report import build_report
from featcache.settings import FinetuneSettings, TrainOptions
from featcache.training import full_model

DATASET = "synthetic:n=128,classes=4,size=32,seed=0"


PRETRAINED = SHARED_DATA / "keras" / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """ImageNet mobilenetv2 (alpha 0.35) weights from ../shared/data, loaded by path; else random weights
    whose BatchNorm statistics are those of the data.

    With weights=none every BatchNorm layer keeps mean 0 and variance 1 in inference mode, and the pooled
    features come out near 1e-10: nothing can learn from them. One training-mode pass with momentum 0
    sets each layer's statistics to the batch's. (Random features still do not generalise on the
    synthetic data: only the pretrained weights make test accuracy beat chance.)
    """
    if PRETRAINED.is_file():
        return PRETRAINED
    spec = make_spec("mobilenetv2", input_size=32, weights="none", options={"alpha": 0.35})
    backbone = build_feature_model(spec)
    images = load_dataset(DATASET).splits["train"].images.array.astype("float32")
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    backbone(keras.applications.mobilenet_v2.preprocess_input(images), training=True)
    path = tmp_path_factory.mktemp("weights") / "calibrated.weights.h5"
    backbone.save_weights(path)
    return path


@pytest.fixture(scope="module")
def spec(weights_file):
    return make_spec("mobilenetv2", input_size=32, weights=str(weights_file), options={"alpha": 0.35})


class Snapshots(keras.callbacks.Callback):
    """Every variable of the model (by path) when each model.fit begins and ends."""

    def __init__(self):
        super().__init__()
        self.taken = []

    def _take(self):
        return {v.path: v.numpy().copy() for v in self.model.variables}

    def on_train_begin(self, logs=None):
        self.taken.append({"begin": self._take()})

    def on_train_end(self, logs=None):
        self.taken[-1]["end"] = self._take()


@pytest.fixture(scope="module")
def trained(spec, tmp_path_factory):
    """One run: 3 epochs of the head, then 1 epoch with the top block unfrozen."""
    snapshots = Snapshots()
    settings = FinetuneSettings(epochs=3, finetune_epochs=1, unfreeze=1, learning_rate=1e-2, batch_size=16,
                                augment=False)
    root = tmp_path_factory.mktemp("cache")
    record = finetune(load_dataset(DATASET), spec, settings, options=TrainOptions(val_split=0.1, patience=0),
                      root=root, progress=False, callbacks=[snapshots])
    return record, snapshots.taken, root


@pytest.mark.backends
def test_loss_goes_down_and_accuracy_beats_chance(trained):
    record, _, _ = trained
    losses = [epoch["loss"] for epoch in record["history"]["head"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert len(record["history"]["finetune"]) == 1
    if not PRETRAINED.is_file():
        pytest.skip(f"test accuracy beats chance only with pretrained weights: {PRETRAINED} is absent")
    assert record["test"]["accuracy"] > 0.6  # 4 classes: chance is 0.25


def test_phase_2_trains_only_the_unfrozen_layers(trained, spec):
    _, taken, _ = trained
    assert len(taken) == 2  # phase 1, phase 2
    begin, end = taken[1]["begin"], taken[1]["end"]
    layers = build_feature_model(spec).layers
    top_block = {layer.name for layer in layers[block_starts("mobilenetv2", layers)[-1]:]
                 if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)}
    weights = [path for path in begin if not path.startswith("seed_generator")]  # dropout's random state
    changed = {path for path in weights if not np.array_equal(begin[path], end[path])}
    layer_of = {path: path.split("/")[-2] for path in weights}
    assert {layer_of[path] for path in changed} == top_block | {"classifier"}  # every one of them, and only those


def test_batchnorm_statistics_never_change(trained):
    _, taken, _ = trained
    first, last = taken[0]["begin"], taken[-1]["end"]
    statistics = [p for p in first if p.endswith(("moving_mean", "moving_variance"))]
    assert len(statistics) > 50
    assert all(np.array_equal(first[p], last[p]) for p in statistics)


def test_saved_model_keeps_batchnorm_in_inference_mode(trained):
    """What a resumed run loads: its BatchNorm layers stay frozen, so even training=True leaves them alone."""
    record, _, root = trained
    backbone = backbone_of(keras.saving.load_model(records.record_folder(record["id"], root) / "model.keras"))
    norms = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert not any(layer.trainable for layer in norms)
    before = [layer.moving_mean.numpy().copy() for layer in norms]
    backbone(np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 3)).astype("float32"), training=True)
    assert all(np.array_equal(a, layer.moving_mean.numpy()) for a, layer in zip(before, norms))


def test_record_report_and_predict(trained, tmp_path):
    record, _, root = trained
    saved = records.load_record(record["id"], root)
    assert saved["format"] == records.FORMAT and saved["kind"] == "finetune" and saved["features"] is None
    assert saved["model"]["backbone"] == record["model"]["backbone"] and saved["model"]["input_size"] == 32
    assert saved["model"]["backbone"]["name"] == "mobilenetv2" and saved["model"]["backbone"]["options"] == {"alpha": 0.35}
    assert saved["model"]["weights_sha256"] and saved["cv"]["folds"] == 0
    built = build_report([saved], tmp_path / "report")
    assert saved["approach"] in built.text and "finetune" in built.markdown.read_text()
    test_images = load_dataset(DATASET).splits["test"]
    for i in range(4):
        Image.fromarray(test_images.images.array[i]).save(tmp_path / f"{i}.png")
    predictions, skipped = predict(saved, [tmp_path / "*.png"], top_k=2, progress=False)
    predictions = list(predictions)
    assert len(predictions) == 4 and not skipped
    assert all(p.classes[0] in saved["dataset"]["class_names"] and p.probabilities[0] >= p.probabilities[1]
               for p in predictions)


def fake_mlp_record(spec, root, n_classes=4, label_set="fine", model_file="model.keras"):
    """A head record like `featcache fit --head mlp` writes: a Keras model from features to probabilities."""
    data = load_dataset(DATASET)
    features = keras.Input((build_feature_model(spec).output_shape[-1],))
    head = keras.Model(features, keras.layers.Dense(n_classes, activation="softmax")(features))
    record = {"id": records.new_record_id("mlp"), "created": records.now_iso(), "kind": "head",
              "approach": "mlp on mobilenetv2-32-avg", "head": "mlp", "params": {},
              "dataset": {"name": data.name, "fingerprint": data.fingerprint, "label_set": label_set,
                          "class_names": data.class_names[label_set], "n_train": 128, "n_test": 32},
              "features": {"backbone": spec.to_record(), "weights_sha256": weights_sha256(spec)},
              "cv": {"folds": 2, "seed": 0, "fold_metrics": [], "summary": {}}, "test": None,
              "model_file": model_file}
    folder = records.save_record(record, root)
    head.save(folder / "model.keras")
    return records.load_record(record["id"], root), head


def test_phase_1_can_start_from_a_fitted_mlp_head(spec, root):
    data = load_dataset(DATASET)
    record, head = fake_mlp_record(spec, root)
    path = init_head_file(record, spec, data.fingerprint, "fine")
    model = full_model(FinetuneRecipe(spec, FinetuneSettings(init_head=str(path))), 4, None, None)
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    assert nested[0] is backbone_of(model) and len(nested) == 2
    assert all(np.array_equal(a, b) for a, b in zip(nested[1].get_weights(), head.get_weights()))
    with pytest.raises(FeatcacheError, match="not on this dataset's coarse labels"):
        init_head_file(record, spec, data.fingerprint, "coarse")
    other = make_spec("mobilenetv2", input_size=48, weights="none", options={"alpha": 0.35})
    with pytest.raises(FeatcacheError, match="fitted on other features.*input_size 32 vs 48"):
        init_head_file(record, other, data.fingerprint, "fine")
    svm, _ = fake_mlp_record(spec, root, model_file="model.joblib")
    with pytest.raises(FeatcacheError, match="has no saved Keras head"):
        init_head_file(svm, spec, data.fingerprint, "fine")


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def test_cli_finetune_from_a_head_then_report_and_predict(spec, root, tmp_path):
    mlp, _ = fake_mlp_record(spec, root)
    code, out = run("finetune", "--backbone", "mobilenetv2", "--alpha", "0.35", "--input-size", "32",
                    "--weights", spec.weights, "--dataset", DATASET, "--epochs", "1", "--unfreeze", "0",
                    "--batch-size", "32", "--init-head", mlp["id"])
    assert code == 0, out
    weights = spec.weights.rsplit("/", 1)[-1]
    assert f"finetune mobilenetv2(alpha=0.35)-32-avg-{weights} (unfreeze 0, from a fitted head)" in out
    record_id = out.strip().splitlines()[-1].split()[-1]
    saved = records.load_record(record_id, root)
    assert saved["params"]["init_head"].endswith(f"{mlp['id']}/model.keras")
    code, out = run("report", record_id)
    assert code == 0 and "finetune mobilenetv2(alpha=0.35)-32-avg" in out
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "x.png")
    code, out = run("predict", "--result", record_id, tmp_path / "x.png", "--out", tmp_path / "p.csv")
    assert code == 0 and "1 predictions written" in out, out


SMALL = ["--backbone", "mobilenetv2", "--alpha", "0.35", "--input-size", "32", "--weights", "none",
         "--dataset", "synthetic:n=16"]


@pytest.mark.parametrize("args, message", [
    (["--backbone", "resnet9000"], "unknown backbone 'resnet9000'"),
    (["--unfreeze", "18"], "--unfreeze 18 must be between 0 and the 17 blocks of mobilenetv2"),
    (["--epochs", "0"], "--epochs 0 must be an integer >= 1"),
    (["--folds", "1"], "--folds 1 must be 0 or an integer >= 2"),
    (["--label", "nope"], "has no label set 'nope'"),
    (["--init-head", "no-such-record"], "no result record 'no-such-record'"),
    (["--resume"], "resume: no unfinished mobilenetv2 run with these settings"),
])
def test_bad_input_is_one_line(root, args, message):
    code, out = run("finetune", *SMALL, *args)  # a repeated option: click takes the last value
    assert code == 2, out
    assert out.startswith("error: ") and message in out and "Traceback" not in out
    assert len(out.strip().splitlines()) == 1


def test_dataset_without_test_split_needs_folds(root, tmp_path):
    for name in ("a", "b"):
        write_images(tmp_path / "photos" / name, 3, size=(32, 32))
    code, out = run("finetune", "--backbone", "mobilenetv2", "--alpha", "0.35", "--input-size", "32",
                    "--weights", "none", "--dataset", f"folder:{tmp_path / 'photos'}")
    assert code == 2 and "has no test split to score on: cross-validate with folds=K" in out, out
