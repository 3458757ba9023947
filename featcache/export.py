"""Export a result record's model as a self-contained folder, and load it back.

The folder never needs featcache's cache: raw uint8 images of any size go in, class
probabilities come out. Resizing (the same TensorFlow bilinear op as extraction) and the
backbone's preprocessing are layers of the exported Keras model:

- a Keras head (``mlp``): one end-to-end ``model.keras``, images in, probabilities out;
- any other head: ``backbone.keras`` (images in, features out) plus the head in its own format
  (``head.joblib``), joined by :class:`ExportedModel`.

``manifest.json`` holds the class names, input size, library versions and file hashes.
"""

import json
import shutil
from pathlib import Path

import numpy as np

from featcache import formats, heads, records
from featcache.backbones import BackboneSpec, build_feature_model
from featcache.errors import FeatcacheError
from featcache.files import file_sha256, write_json
from featcache.predict import feature_spec, load_head, probabilities

MANIFEST = "manifest.json"
FORMAT_NAME, FORMAT_VERSION = "featcache-export", 1
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"


def affine_preprocessing(spec: BackboneSpec) -> tuple[np.ndarray, np.ndarray]:
    """The backbone's preprocess_input as out = pixel @ kernel + bias, found by probing it.

    Every Keras application's preprocessing (scaling to [-1, 1], caffe's BGR mean subtraction,
    torch's mean/std normalisation, or none) is per-pixel affine, so it becomes one fixed 1x1
    convolution: a plain Keras layer that needs no custom code to load.
    """
    preprocess = spec.backbone.preprocess_input()
    probes = np.array([[[[0, 0, 0], [100, 0, 0], [0, 100, 0], [0, 0, 100], [17, 211, 90]]]], dtype=np.float32)
    out = np.asarray(preprocess(probes.copy()), dtype=np.float64)[0, 0]
    bias = out[0]
    kernel = (out[1:4] - bias) / 100.0  # row i: the output for a unit of input channel i
    if not np.allclose(probes[0, 0, 4] @ kernel + bias, out[4], atol=1e-3):
        raise FeatcacheError(f"{spec.name}'s preprocessing is not per-pixel affine: it cannot be exported")
    return kernel.astype(np.float32), bias.astype(np.float32)


def image_model(spec: BackboneSpec):
    """uint8 images of any size -> resize -> preprocessing -> backbone features, as one Keras model."""
    from featcache.backend import keras

    kernel, bias = affine_preprocessing(spec)
    images = keras.Input((None, None, 3), dtype="uint8", name="images")
    pixels = keras.layers.Rescaling(1.0, name="to_float")(images)
    resized = keras.layers.Resizing(spec.input_size, spec.input_size, interpolation="bilinear", name="resize")(pixels)
    preprocess = keras.layers.Conv2D(3, 1, name="preprocess", trainable=False)
    preprocessed = preprocess(resized)
    preprocess.set_weights([kernel.reshape(1, 1, 3, 3), bias])
    features = build_feature_model(spec)(preprocessed)
    return keras.Model(images, features, name=f"{spec.name}_features")


def check_empty(out_dir) -> None:
    """Fail now, before any model is loaded, unless ``out_dir`` is a new or empty folder."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FeatcacheError(f"{out_dir} is not empty: choose a new folder for out_dir")


def export(record: dict, out_dir: Path) -> Path:
    """Write the record's model as a self-contained folder; return the folder."""
    check_empty(out_dir)
    from featcache.backend import keras

    spec, head = feature_spec(record), load_head(record)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    features = image_model(spec)
    if hasattr(head, "to_keras"):  # a Keras head: one end-to-end model
        n_classes = len(record["dataset"]["class_names"])
        end_to_end = keras.Model(features.input, head.to_keras(n_classes)(features.output), name="classifier")
        end_to_end.save(out_dir / "model.keras")
        files = {"model": "model.keras"}
    else:
        features.save(out_dir / "backbone.keras")
        model_file = Path(record["_folder"]) / record["model_file"]
        shutil.copy(model_file, out_dir / f"head{model_file.suffix}")
        files = {"backbone": "backbone.keras", "head": f"head{model_file.suffix}"}
    manifest = {
        "format": FORMAT,
        "record": record["id"],
        "approach": record["approach"],
        "class_names": record["dataset"]["class_names"],
        "label_set": record["dataset"]["label_set"],
        "input_size": spec.input_size,
        "backbone": record["features"],
        "files": files,
        "sha256": {name: file_sha256(out_dir / name) for name in files.values()},
        "versions": records.library_versions(),
    }
    write_json(out_dir / MANIFEST, manifest)
    return out_dir


class ExportedModel:
    """An exported folder loaded back: ``predict_proba`` and ``predict`` on images.

    Images are file paths, or uint8 RGB arrays (h, w, 3) of any size, or one (n, h, w, 3) array.
    """

    def __init__(self, folder):
        from featcache.backend import keras

        self.folder = Path(folder)
        manifest_file = self.folder / MANIFEST
        if not manifest_file.is_file():
            raise FeatcacheError(f"{self.folder} is not an exported featcache model (no {MANIFEST})")
        self.manifest = json.loads(manifest_file.read_text())
        formats.check_version(self.manifest.get("format"), FORMAT_NAME, FORMAT_VERSION, manifest_file)
        for name, digest in self.manifest["sha256"].items():
            if file_sha256(self.folder / name) != digest:
                raise FeatcacheError(f"{self.folder / name} changed since it was exported: export it again")
        self.class_names = self.manifest["class_names"]
        self.classes_ = np.array(self.class_names)  # as in scikit-learn: predict returns these
        files = self.manifest["files"]
        if "model" in files:
            self._model, self._head = keras.saving.load_model(self.folder / files["model"]), None
        else:
            from featcache import heads

            self._model = keras.saving.load_model(self.folder / files["backbone"])
            self._head = heads.load_head(self.folder / files["head"])

    def predict_proba(self, images) -> np.ndarray:
        rows = [self._probabilities(group) for group in _same_size_groups(images)]
        return np.concatenate(rows) if rows else np.zeros((0, len(self.class_names)))

    def predict(self, images) -> np.ndarray:
        """The most probable class name of each image (``classes_[argmax(predict_proba)]``)."""
        return self.classes_[np.argmax(self.predict_proba(images), axis=1)]

    def _probabilities(self, batch: np.ndarray) -> np.ndarray:
        out = self._model.predict_on_batch(batch)
        if self._head is None:
            return np.asarray(out, dtype=np.float64)
        return probabilities(self._head, np.asarray(out), len(self.class_names))


def load_model(folder) -> ExportedModel:
    """Load a folder written by ``featcache export``."""
    return ExportedModel(folder)


def _same_size_groups(images, batch_size: int = 32):
    """Consecutive images of one size, stacked into uint8 batches (a batch must be one array)."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    group = []
    for image in images:
        pixels = _pixels(image)
        if group and (pixels.shape != group[0].shape or len(group) == batch_size):
            yield np.stack(group)
            group = []
        group.append(pixels)
    if group:
        yield np.stack(group)


def _pixels(image) -> np.ndarray:
    if isinstance(image, (str, Path)):
        from featcache.datasets import decode_image

        return decode_image(image)  # as extraction decodes it: EXIF orientation, transparency, 16 bits
    pixels = np.asarray(image)
    if pixels.ndim != 3 or pixels.shape[-1] != 3 or pixels.dtype != np.uint8:
        raise FeatcacheError(f"an image must be a path or a uint8 (height, width, 3) array, got {pixels.dtype} {pixels.shape}")
    return pixels
