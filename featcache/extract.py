"""Extraction: stream a dataset through a backbone, batch by batch, into the feature cache.

Images are read, resized and preprocessed in a ``tf.data`` pipeline that runs ahead of the model,
so the resized dataset is never held in memory. Features go to disk one chunk of rows at a time
(see :mod:`featcache.cache`), which makes a killed extraction resumable; because a chunk is a
whole number of batches, a resumed run feeds the model exactly the batches an uninterrupted run
would, and its features are identical.
"""

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from featcache import cache, records
from featcache.backbones import BackboneSpec, build_feature_model, imagenet_weights_path, weights_sha256
from featcache.datasets import Dataset
from featcache.errors import FeatcacheError

DTYPES = ("float32", "float16")


@dataclass
class ExtractResult:
    path: Path
    cached: bool  # True when the features were already there and nothing was computed
    rows: dict  # split -> rows
    width: int
    seconds: float  # time spent computing features in this run
    images_per_second: float
    skipped: list


def cache_key(dataset_fingerprint: str, spec: BackboneSpec, weights_hash, dtype: str) -> str:
    """A hash of every input that decides the features: change any of them and the key changes."""
    inputs = {
        "format": cache.FORMAT,
        "dataset": dataset_fingerprint,
        "backbone": spec.name,
        "options": list(spec.options),
        "input_size": spec.input_size,
        "pooling": spec.pooling,
        "weights": weights_hash or f"random-seed-{spec.seed}",
        "preprocessing": f"{spec.backbone.module}.preprocess_input",
        "resize": "bilinear",
        "dtype": dtype,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def cache_stem(dataset_name: str, spec: BackboneSpec, key: str) -> str:
    safe_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset_name)
    return f"{safe_name}-{spec.name}-{spec.input_size}-{spec.pooling}-{key[:12]}"


def extract(dataset: Dataset, spec: BackboneSpec, root=None, batch_size: int = 64, dtype: str = "float32",
            force: bool = False, progress: bool = True) -> ExtractResult:
    """Extract (or find cached) features of every split of ``dataset``; return where they are."""
    if dtype not in DTYPES:
        raise FeatcacheError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if batch_size < 1 or cache.CHUNK_ROWS % batch_size:
        raise FeatcacheError(f"--batch-size must divide {cache.CHUNK_ROWS} (e.g. 16, 32, 64, 128), got {batch_size}")
    model = None
    if spec.weights == "imagenet" and not imagenet_weights_path(spec).is_file():
        model = build_feature_model(spec)  # lets Keras download the file (or explain where to put it)
    weights_hash = weights_sha256(spec)
    key = cache_key(dataset.fingerprint(), spec, weights_hash, dtype)
    stem = cache_stem(dataset.name, spec, key)
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
            "dataset": {"name": dataset.name, "fingerprint": dataset.fingerprint(), "label_sets": dataset.label_sets},
            "backbone": {**asdict(spec), "options": dict(spec.options)},
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
    import tensorflow as tf
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
            for images in batch_pipeline(dataset.splits[split].images, done[split], n, batch_size, spec):
                chunk.append(forward(images).numpy().astype(dtype))
                bar.update(len(chunk[-1]))
                if sum(map(len, chunk)) == cache.CHUNK_ROWS:
                    partial.write_chunk(split, index, np.concatenate(chunk))
                    chunk, index = [], index + 1
            if chunk:
                partial.write_chunk(split, index, np.concatenate(chunk))
    return total - already


def batch_pipeline(images, start: int, stop: int, batch_size: int, spec: BackboneSpec):
    """A tf.data pipeline yielding preprocessed float batches of rows start..stop, read and resized lazily.

    Images of one size are read a batch at a time; images of mixed sizes one at a time, since they
    can only be stacked once resized. Both resize with the same TensorFlow bilinear op.
    """
    return image_batches(images, start, stop, batch_size, spec.input_size, spec.backbone.preprocess_input())


def image_batches(images, start: int, stop: int, batch_size: int, size: int, transform):
    """Batches of rows start..stop resized to size x size as in :func:`batch_pipeline`, then mapped by
    ``transform``: the backbone's preprocessing when extracting; training puts augmentation in it too."""
    import tensorflow as tf

    def numpy_source(read, rank):
        def load(index):
            out = tf.numpy_function(lambda i: read(int(i)), [index], tf.uint8, stateful=False)
            out.set_shape((None,) * (rank - 1) + (3,))
            return out
        return load

    def resize(pixels):
        return tf.image.resize(tf.cast(pixels, tf.float32), (size, size), method="bilinear")

    parallel = dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if images.uniform:
        starts = np.arange(start, stop, batch_size, dtype=np.int64)
        read_batch = lambda first: images.read(first, min(first + batch_size, stop))  # noqa: E731
        batches = tf.data.Dataset.from_tensor_slices(starts).map(numpy_source(read_batch, 4), **parallel)
        batches = batches.map(resize, **parallel)
    else:
        rows = tf.data.Dataset.range(start, stop).map(numpy_source(images.read_one, 3), **parallel)
        batches = rows.map(resize, **parallel).batch(batch_size)
    return batches.map(transform, **parallel).prefetch(2)
