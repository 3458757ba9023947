"""Classify new images with the model of a result record.

The feature pipeline (each of them, for a head on fused caches) is rebuilt from the record's
provenance (backbone, weights, input size, pooling, preprocessing), never re-typed by the user, and
refused when the weights file no longer matches the hash the record was made with. Images stream
through the same image pipeline as extraction (:mod:`featcache.images`), so a folder of 100,000
images is classified in flat memory.
"""

import csv
import glob
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featcache import flips, heads, records
from featcache.backbones import BackboneSpec, get_backbone, weights_sha256
from featcache.compute import Compute, backend_name
from featcache.datasets import IMAGE_SUFFIXES, open_images
from featcache.errors import FeatcacheError
from featcache.evaluation import class_scores
from featcache.images import Framing, HostBatches, affine_layer, feature_model, forward
from featcache.params import Interval, check

TRAINED_KINDS = ("finetune", "scratch")  # records whose saved model takes images, not features


def choose_record(ref: str, root=None, dataset=None, label_set=None, on_unreadable=None) -> dict:
    """A record by id or path, or with ``best`` the one with the highest CV accuracy (then test accuracy).

    ``best`` considers only readable records with a CV accuracy (finetune and scratch runs without --folds
    have none); ``on_unreadable`` is called with the (path, problem) pairs of the unreadable ones.
    """
    if ref != "best":
        return records.load_record(ref, root)
    readable, unreadable = records.scan_records(root)
    if on_unreadable is not None:
        on_unreadable(unreadable)
    candidates = [
        r for r in readable
        if r.get("model_file") and "accuracy" in r["cv"]["summary"]
        and dataset in (None, r["dataset"]["name"], r["dataset"]["fingerprint"])
        and label_set in (None, r["dataset"]["label_set"])
    ]
    if not candidates:
        raise FeatcacheError("no result record with a saved model and a CV accuracy matches: run `featcache fit` "
                             "first, or give a record id")
    groups = {(r["dataset"]["fingerprint"], r["dataset"]["label_set"]) for r in candidates}
    if len(groups) > 1:
        raise FeatcacheError("records of several datasets or label sets: choose one with dataset and label_set")
    return max(candidates, key=lambda r: (r["cv"]["summary"]["accuracy"]["mean"], (r.get("test") or {}).get("accuracy", -1)))


def feature_specs(record: dict) -> list[tuple[BackboneSpec, dict]]:
    """(backbone settings, recorded part) of each feature pipeline of the record (one per fused cache, in
    column order), each checked against the hash of the weights it was made with."""
    features = record.get("features")
    if not features:
        raise FeatcacheError(f"record {record['id']} has no feature pipeline (it is a {record['kind']} model)")
    return [(_checked_spec(part, record["id"]), part) for part in records.feature_parts(features)]


def _checked_spec(part: dict, record_id: str) -> BackboneSpec:
    spec = BackboneSpec.from_record(part["backbone"])
    recorded, current = part["weights_sha256"], weights_sha256(spec)
    if spec.weights == "imagenet" and current is None:
        return spec  # not downloaded yet: Keras' loader fetches the file, checked again in check_downloaded
    if recorded != current:
        raise FeatcacheError(
            f"the {spec.name} weights ({spec.weights}) have sha256 {str(current)[:12]}, but record {record_id} "
            f"was made with {str(recorded)[:12]}: restore that weights file or fit again"
        )
    return spec


def check_downloaded(spec: BackboneSpec, part: dict, record_id: str) -> None:
    """Once the model is built (so ImageNet weights are downloaded): the weights are those of the record."""
    if part["weights_sha256"] != weights_sha256(spec):
        raise FeatcacheError(f"the downloaded {spec.name} weights differ from those of record {record_id}")


def part_feature_model(spec: BackboneSpec, part: dict, input_dtype: str = "float32"):
    """The image -> feature model of one of a record's feature pipelines (``part``): its backbone, compute settings
    and flip averaging (:func:`featcache.flips.pipeline_tta`)."""
    return feature_model(spec, recorded_compute(part), input_dtype, tta=flips.pipeline_tta(part))


def recorded_compute(part: dict) -> Compute:
    """The precision and XLA setting a record's features (``part``: one of its feature pipelines) were computed
    with, on this process's backend."""
    used = part.get("compute") or {}
    return Compute(backend_name(), used.get("precision", "float32"), used.get("xla", False))


def load_head(record: dict):
    """The record's saved head, averaging over flips when it was fitted so (:func:`featcache.flips.around`)."""
    if not record.get("model_file"):
        raise FeatcacheError(f"record {record['id']} has no saved model: fit it again")
    return flips.around(load_model_file(heads.load_head, Path(record["_folder"]) / record["model_file"]),
                        record["features"])


def load_model_file(load, path: Path):
    """``load(path)``, with any failure of a damaged file as one FeatcacheError naming it."""
    try:
        return load(path)
    except FeatcacheError:
        raise
    except Exception as exc:  # unpickling and Keras loading fail in many ways on a damaged file
        raise FeatcacheError(f"cannot load the saved model {path} ({type(exc).__name__}: {exc}): "
                             "fit it again") from None


def collect_images(inputs) -> list[Path]:
    """Image files named directly, found under folders (recursively), or matched by glob patterns."""
    found = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
            if not matches:
                raise FeatcacheError(f"no image matches {item}")
            found += matches
    if not found:
        raise FeatcacheError("no images to classify: give image files, folders or glob patterns")
    return found


@dataclass
class Prediction:
    path: Path
    classes: list[str]  # the top-k class names, most probable first
    probabilities: list[float]


def ranks(record: dict, top_k: int) -> int:
    """How many classes a prediction lists: ``top_k``, at most the record's class count."""
    return min(top_k, len(record["dataset"]["class_names"]))


def check_output(path: Path) -> None:
    """Fail now, not after loading the model, when the file ``path`` cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as exc:
        raise FeatcacheError(f"cannot write {path} ({exc.strerror}): choose another output file") from None


def predict(record: dict, inputs, top_k: int = 5, batch_size: int = 64, skip_bad: bool = False, progress=True):
    """Yield a :class:`Prediction` per image, batch by batch, with its ``top_k`` (at most every) classes;
    ``skipped`` lists left-out files. The images are checked before the model is loaded.

    Returns (generator, skipped paths).
    """
    from tqdm import tqdm

    for name, value in (("top_k", top_k), ("batch_size", batch_size)):
        check(name, value, [Interval(int, 1, None)])
    top_k = ranks(record, top_k)
    class_names = np.array(record["dataset"]["class_names"])
    images, _, skipped = open_images(collect_images(inputs), skip_bad)
    batches, probabilities = record_pipeline(record, batch_size)

    def generate():
        row = 0
        with tqdm(total=len(images), unit="img", disable=not progress, desc="predict") as bar:
            for batch in batches(images):
                proba = probabilities(batch)
                for p in proba:
                    best = np.argsort(-p, kind="stable")[:top_k]
                    yield Prediction(images.paths[row], list(class_names[best]), [float(v) for v in p[best]])
                    row += 1
                bar.update(len(proba))

    return generate(), skipped


def record_pipeline(record: dict, batch_size: int):
    """(images -> batches, batch -> probabilities over the record's classes) of the record's model:
    :func:`trained_model` for finetune and scratch records, else :func:`head_on_features`."""
    if record["kind"] in TRAINED_KINDS:
        return trained_model(record, batch_size)
    return head_on_features(record, batch_size, len(record["dataset"]["class_names"]))


def head_on_features(record: dict, batch_size: int, n_classes: int):
    """(images -> preprocessed batches, batch -> probabilities) of a head on the record's backbone features: each
    feature pipeline (one per fused cache) runs on its own framing of the images, and the head gets their
    features side by side, in the recorded order (:func:`featcache.flips.side_by_side`). A batch holds one host
    batch per distinct framing."""
    specs, head = feature_specs(record), load_head(record)
    runs = []
    for spec, part in specs:
        runs.append(forward(part_feature_model(spec, part), batch_size))
        check_downloaded(spec, part, record["id"])
    framings = [Framing.of(spec) for spec, _ in specs]
    distinct = list(dict.fromkeys(framings))  # the same images at the same framing are read once
    paired = isinstance(head, flips.Flipped)

    def batches(images):
        return zip(*(HostBatches(images, 0, len(images), batch_size, framing) for framing in distinct))

    def probabilities_of(batch):
        framed = dict(zip(distinct, batch))
        features = flips.side_by_side([run(framed[f]) for run, f in zip(runs, framings)], paired)
        return probabilities(head, features, n_classes)

    return batches, probabilities_of


def trained_model(record: dict, batch_size: int):
    """The same pair for a finetune or scratch record's saved model, which takes images (resizing and
    preprocessing are its own first layers)."""
    from featcache.backend import keras

    if not record.get("model_file"):
        raise FeatcacheError(f"record {record['id']} has no saved model: train it again")
    model = load_model_file(lambda path: keras.saving.load_model(path, compile=False),  # no optimizer state
                            Path(record["_folder"]) / record["model_file"])
    if record["model"].get("takes") == "preprocessed":  # saved by featcache-result/1: add its input layers
        model = with_input_layers(model, record["model"])
    run = forward(model, batch_size)
    return (lambda images: HostBatches(images, 0, len(images), batch_size, Framing(record["model"]["input_size"])),
            lambda batch: run(batch).astype(np.float64))


def with_input_layers(model, provenance: dict):
    """A model of images around one that takes resized (and, for a fine-tuned backbone, preprocessed) pixels."""
    from featcache.backend import keras

    size, backbone = provenance["input_size"], provenance.get("backbone")
    layers = Framing(size).layers()
    if backbone:
        layers.append(affine_layer(size, get_backbone(backbone["name"]).preprocess_input()))
    images = keras.Input((None, None, 3), name="images")
    x = images
    for layer in layers:
        x = layer(x)
    return keras.Model(images, model(x))


def probabilities(head, features: np.ndarray, n_classes: int) -> np.ndarray:
    """The head's probabilities laid out over every class of the dataset (absent classes get 0)."""
    out = class_scores(head, features, n_classes, "predict_proba")
    if out is None:
        raise FeatcacheError(f"the head {type(head).__name__} has no predict_proba: it cannot give probabilities")
    return out


def write_csv(predictions, path: Path, top_k: int):
    """Stream predictions into a CSV (path, then class and probability for each rank); yield them on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path"] + [f"{kind}{rank}" for rank in range(1, top_k + 1) for kind in ("class", "probability")])
        for p in predictions:
            writer.writerow([str(p.path)] + [v for pair in zip(p.classes, (f"{q:.6f}" for q in p.probabilities))
                                             for v in pair])
            yield p
