"""Extraction: stream a dataset through a backbone, batch by batch, into the feature cache.

Images are read, resized and preprocessed by the shared image pipeline (:mod:`featcache.images`),
which runs ahead of the model, so the resized dataset is never held in memory. Features go to disk one chunk of rows at a time
(see :mod:`featcache.cache`), which makes a killed extraction resumable; because a chunk is a
whole number of batches, a resumed run feeds the model exactly the batches an uninterrupted run
would, and its features are identical.
"""

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featcache import cache, records
from featcache.backbones import BackboneSpec, build_feature_model, imagenet_weights_path, weights_sha256
from featcache.datasets import Dataset
from featcache.images import feature_batches
from featcache.params import Options, Rule, validate

DTYPES = ("float32", "float16")
RULES = {
    "batch_size": [Rule(lambda b: isinstance(b, int) and b > 0 and cache.CHUNK_ROWS % b == 0,
                        f"a divisor of {cache.CHUNK_ROWS} (e.g. 16, 32, 64, 128)")],
    "dtype": [Options(*DTYPES)],
}


@dataclass
class ExtractResult:
    path: Path
    cached: bool  # True when the features were already there and nothing was computed
    rows: dict  # split -> rows
    width: int
    seconds: float  # time spent computing features in this run
    images_per_second: float
    skipped: list


def extract(dataset: Dataset, spec: BackboneSpec, root=None, batch_size: int = 64, dtype: str = "float32",
            force: bool = False, progress: bool = True) -> ExtractResult:
    """Extract (or find cached) features of every split of ``dataset``; return where they are."""
    validate({"batch_size": batch_size, "dtype": dtype}, RULES)
    model = None
    if spec.weights == "imagenet" and not imagenet_weights_path(spec).is_file():
        model = build_feature_model(spec)  # lets Keras download the file (or explain where to put it)
    weights_hash = weights_sha256(spec)
    key = cache.cache_key(dataset.fingerprint, spec, weights_hash, dtype)
    stem = cache.cache_stem(dataset.name, spec, key)
    path = cache.file_path(stem, root)
    rows = {split: len(s.images) for split, s in dataset.splits.items()}
    with cache.ExtractionLock(stem, root):
        if force:
            path.unlink(missing_ok=True)
            cache.partial_dir(stem, root).exists() and cache.PartialExtraction(stem, {"key": key}, root).remove()
        if path.is_file():
            found = cache.FeatureCache(path)
            return ExtractResult(path, True, found.rows, found.width, 0.0, 0.0, found.provenance["skipped"])
        provenance = {
            "key": key,
            "dataset": {"name": dataset.name, "fingerprint": dataset.fingerprint, "label_sets": dataset.label_sets},
            "backbone": spec.to_record(),
            "weights_sha256": weights_hash,
            "preprocessing": f"keras.applications.{spec.backbone.module}.preprocess_input",
            "dtype": dtype,
            "rows": rows,
            "skipped": dataset.skipped,
        }
        partial = cache.PartialExtraction(stem, {"key": key, "rows": rows, "provenance": provenance}, root)
        model = model or build_feature_model(spec)
        started = time.perf_counter()
        computed = _run(dataset, spec, model, partial, rows, batch_size, dtype, progress)
        seconds = time.perf_counter() - started
        width = int(model.output_shape[-1])
        provenance.update(width=width, seconds=round(seconds, 3), created=records.now_iso(),
                          versions=records.library_versions())
        splits = {split: {"rows": n, "width": width, "labels": dataset.splits[split].labels}
                  for split, n in rows.items()}
        cache.write_cache_file(path, partial, splits, dataset.class_names, provenance, dtype)
        partial.remove()
    rate = computed / seconds if seconds else 0.0
    return ExtractResult(path, False, rows, width, seconds, rate, dataset.skipped)


def _run(dataset, spec, model, partial, rows, batch_size, dtype, progress) -> int:
    """Compute every chunk not already on disk; return the number of images computed."""
    from featcache.backend import tensorflow
    tf = tensorflow()
    from tqdm import tqdm

    # One trace for every batch size: a retrace of a big backbone for the last, smaller batch takes seconds.
    signature = [tf.TensorSpec((None, spec.input_size, spec.input_size, 3), tf.float32)]
    forward = tf.function(lambda x: model(x, training=False), input_signature=signature)
    done = {split: partial.rows_done(split, n) for split, n in rows.items()}
    total, already = sum(rows.values()), sum(done.values())
    bar = tqdm(total=total, initial=already, unit="img", desc=f"{spec.name} {spec.input_size}px",
               disable=not progress, smoothing=0.1)
    with bar:
        for split, n in rows.items():
            chunk, index = [], done[split] // cache.CHUNK_ROWS
            for images in feature_batches(dataset.splits[split].images, done[split], n, batch_size, spec):
                chunk.append(forward(images).numpy().astype(dtype))
                bar.update(len(chunk[-1]))
                if sum(map(len, chunk)) == cache.CHUNK_ROWS:
                    partial.write_chunk(split, index, np.concatenate(chunk))
                    chunk, index = [], index + 1
            if chunk:
                partial.write_chunk(split, index, np.concatenate(chunk))
    return total - already
