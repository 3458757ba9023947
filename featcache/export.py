"""Export a result record's model as a self-contained folder, and load it back.

The folder never needs featcache's cache: raw uint8 images of any size go in, class
probabilities come out. The exported Keras model is extraction's own image-to-feature model
(:func:`featcache.images.feature_model`: resize and preprocessing are its layers), so it loads and
predicts under any Keras backend:

- a Keras head (``mlp``): one end-to-end ``model.keras``, images in, probabilities out;
- any other head: ``backbone.keras`` (images in, features out) plus the head in its own format
  (``head.joblib``), joined by :class:`ExportedModel`.

A head on fused caches gets one feature model of every recorded pipeline, each on the same images,
their features concatenated in the recorded order: the folder loads as any other.

For a record fitted with flip averaging (:mod:`featcache.flips`) the feature model gives each image's plain
and mirrored features, and the head's probabilities on both are averaged: inside ``model.keras``, or by
:class:`ExportedModel` as the manifest's ``backbone`` entry (the record's features) says.

``manifest.json`` holds the class names, input size (one per pipeline when fused), the record's
feature provenance, library versions and file hashes.
"""

import json
import shutil
from pathlib import Path

import numpy as np

from featcache import flips, formats, heads, records
from featcache.errors import FeatcacheError
from featcache.files import file_hash, write_json
from featcache.predict import feature_specs, load_head, part_feature_model, probabilities, recorded_compute

MANIFEST = "manifest.json"
FORMAT_NAME, FORMAT_VERSION = "featcache-export", 2  # 2: flip layers (featcache's own) in the Keras files
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"


def check_empty(out_dir) -> None:
    """Fail now, before any model is loaded, unless ``out_dir`` is a new or empty folder."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FeatcacheError(f"{out_dir} is not empty: choose a new folder for out_dir")


def export(record: dict, out_dir: Path) -> Path:
    """Write the record's model as a self-contained folder; return the folder."""
    check_empty(out_dir)
    from featcache.backend import keras

    specs, head = feature_specs(record), load_head(record)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    features = image_features(specs, paired=isinstance(head, flips.Flipped))
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
        "input_size": specs[0][0].input_size if len(specs) == 1 else [spec.input_size for spec, _ in specs],
        "backbone": record["features"],
        "files": files,
        "sha256": {name: file_hash(out_dir / name) for name in files.values()},
        "versions": records.library_versions(),
    }
    write_json(out_dir / MANIFEST, manifest)
    return out_dir


def image_features(specs: list, paired: bool = False):
    """uint8 images of any size -> the features of each (spec, recorded part) of :func:`feature_specs`, side by
    side in that order, as one Keras model (the pipeline itself when there is one); ``paired`` (flip averaging):
    every part's plain features, then every part's flipped ones, as :func:`featcache.flips.side_by_side`."""
    from featcache.backend import keras

    if len(specs) == 1:
        spec, part = specs[0]
        return part_feature_model(spec, part, input_dtype="uint8")
    images = keras.Input((None, None, 3), dtype="uint8", name="images")
    parts = []
    for i, (spec, part) in enumerate(specs):
        built = part_feature_model(spec, part, input_dtype="uint8")
        # an uncompiled model of the same layers, uniquely named: a compiled one nested in another warns on loading
        parts.append(keras.Model(built.input, built.output, name=f"part{i}_{built.name}")(images))
    if paired:  # (n, 2, width) each: the views of all parts side by side, then one row again
        views = [keras.layers.Reshape((2, -1), name=f"part{i}_views")(out) for i, out in enumerate(parts)]
        fused = keras.layers.Reshape((-1,), name="features")(keras.layers.Concatenate(name="fused_views")(views))
    else:
        fused = keras.layers.Concatenate(name="features")(parts)
    model = keras.Model(images, fused, name="fused_features")
    model.compile(jit_compile=all(recorded_compute(part).xla for _, part in specs))
    return model


class ExportedModel:
    """An exported folder loaded back: ``predict_proba`` and ``predict`` on images.

    Images are file paths, or uint8 RGB arrays (h, w, 3) of any size, or one (n, h, w, 3) array.
    """

    def __init__(self, folder):
        from featcache import flip_layers  # noqa: F401  (registers the layers a flip export's models hold)
        from featcache.backend import keras

        self.folder = Path(folder)
        manifest_file = self.folder / MANIFEST
        if not manifest_file.is_file():
            raise FeatcacheError(f"{self.folder} is not an exported featcache model (no {MANIFEST})")
        self.manifest = json.loads(manifest_file.read_text())
        formats.check_version(self.manifest.get("format"), FORMAT_NAME, FORMAT_VERSION, manifest_file)
        for name, digest in self.manifest["sha256"].items():
            if file_hash(self.folder / name) != digest:
                raise FeatcacheError(f"{self.folder / name} changed since it was exported: export it again")
        self.class_names = self.manifest["class_names"]
        self.classes_ = np.array(self.class_names)  # as in scikit-learn: predict returns these
        files = self.manifest["files"]
        if "model" in files:
            self._model, self._head = keras.saving.load_model(self.folder / files["model"], compile=False), None
        else:
            self._model = keras.saving.load_model(self.folder / files["backbone"], compile=False)
            self._head = flips.around(heads.load_head(self.folder / files["head"]), self.manifest["backbone"])

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
