"""Extraction: stream a dataset through a backbone, batch by batch, into the feature cache.

The host decodes images in threads, a few batches ahead of one compiled Keras model that resizes,
preprocesses and runs the backbone (:mod:`featcache.images`), so the resized dataset is never held in
memory and every Keras backend runs it. Features go to disk one chunk of rows at a time
(see :mod:`featcache.cache`), which makes a killed extraction resumable; because a chunk is a
whole number of batches, a resumed run feeds the model exactly the batches an uninterrupted run
would, and its features are identical.
"""

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featcache import cache, compute, records
from featcache.backbones import BackboneSpec, imagenet_weights_path, weights_sha256
from featcache.datasets import Dataset
from featcache.images import HostBatches, feature_model, forward
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
    computed: int = 0  # images computed by this run
    resumed: int = 0  # images an earlier, interrupted run had already computed


def extract(dataset: Dataset, spec: BackboneSpec, root=None, batch_size: int = 64, dtype: str = "float32",
            force: bool = False, progress: bool = True, precision: str | None = None,
            xla: bool | None = None) -> ExtractResult:
    """Extract (or find cached) features of every split of ``dataset``; return where they are.

    ``precision`` ("float32" or "mixed") and ``xla`` default to the fastest for the device found
    (:func:`featcache.compute.resolve`); both are part of the cache key.
    Nothing is written before the inputs are known to be good (the model builds, the folder is writable
    and has room for the result), and a cache hit writes nothing, so it also works on a read-only root.
    """
    validate({"batch_size": batch_size, "dtype": dtype}, RULES)
    settings = compute.resolve(precision, xla)
    key, stem, path, weights_hash, model = locate(dataset, spec, dtype, settings, root)
    if path.is_file() and not force:
        return _cached(path)
    model = model or feature_model(spec, settings)
    rows = {split: len(s.images) for split, s in dataset.splits.items()}
    width = int(model.output_shape[-1])
    feature_bytes = sum(rows.values()) * width * np.dtype(dtype).itemsize
    cache.check_writable(root)
    cache.check_space(stem, feature_bytes, root)
    with cache.ExtractionLock(stem, root):
        with cache.reporting_full_disk(stem, feature_bytes, root):
            partial = begin(dataset, spec, key, weights_hash, dtype, settings, rows, width, root, force)
            if partial is None:
                return _cached(path)  # another process finished it meanwhile
            provenance = partial.manifest["provenance"]
            started = time.perf_counter()
            computed = _run(dataset, spec, model, partial, rows, batch_size, dtype, progress)
            seconds = time.perf_counter() - started
            provenance.update(width=width, seconds=round(seconds, 3), created=records.now_iso(),
                              versions=records.library_versions())
            splits = {split: {"rows": n, "width": width, "labels": dataset.splits[split].labels}
                      for split, n in rows.items()}
            cache.write_cache_file(path, partial, splits, dataset.class_names, provenance, dtype)
        partial.remove()
    rate = computed / seconds if seconds else 0.0
    return ExtractResult(path, False, rows, width, seconds, rate, dataset.skipped, computed,
                         sum(rows.values()) - computed)


def locate(dataset: Dataset, spec: BackboneSpec, dtype: str, settings, root=None):
    """(key, stem, cache file, weights hash, model or None) of ``dataset``'s features by ``spec``, after removing the
    leftovers of killed runs. The model is built only where ImageNet weights are not on disk yet: Keras' loader
    downloads them (or explains where to put them)."""
    model = None
    if spec.weights == "imagenet" and not imagenet_weights_path(spec).is_file():
        model = feature_model(spec, settings)
    weights_hash = weights_sha256(spec)
    key = cache.cache_key(dataset.fingerprint, spec, weights_hash, dtype, settings)
    stem = cache.cache_stem(dataset.name, spec, key)
    cache.remove_leftovers(root)
    return key, stem, cache.file_path(stem, root), weights_hash, model


def _cached(path: Path) -> ExtractResult:
    found = cache.FeatureCache(path)
    return ExtractResult(path, True, found.rows, found.width, 0.0, 0.0, found.provenance["skipped"])


def begin(dataset, spec, key, weights_hash, dtype, settings, rows, width, root, force):
    """Under the extraction lock: the in-progress folder to fill (its manifest holds the provenance, completed when
    the run finishes), after removing what ``force`` redoes; None when another process finished it meanwhile."""
    stem = cache.cache_stem(dataset.name, spec, key)
    path = cache.file_path(stem, root)
    if force:
        path.unlink(missing_ok=True)
        for folder in (cache.partial_dir(stem, root), cache.shards_dir(stem, root)):
            shutil.rmtree(folder, ignore_errors=True)
    elif path.is_file():
        return None
    provenance = {**_provenance(dataset, spec, key, weights_hash, dtype, rows), "compute": settings.to_record()}
    manifest = {"key": key, "rows": rows, "width": width, "dtype": dtype, "provenance": provenance}
    return cache.PartialExtraction(stem, manifest, root)


def _provenance(dataset, spec, key, weights_hash, dtype, rows) -> dict:
    return {
        "key": key,
        "dataset": {"name": dataset.name, "fingerprint": dataset.fingerprint, "label_sets": dataset.label_sets},
        "backbone": spec.to_record(),
        "weights_sha256": weights_hash,
        "preprocessing": f"keras.applications.{spec.backbone.module}.preprocess_input",
        "dtype": dtype,
        "rows": rows,
        "skipped": dataset.skipped,
    }


def _run(dataset, spec, model, partial, rows, batch_size, dtype, progress) -> int:
    """Compute every chunk not already on disk (or damaged there); return the number of images computed."""
    from tqdm import tqdm

    run = forward(model, batch_size)
    todo = {split: _row_ranges(partial.missing_chunks(split, n), n) for split, n in rows.items()}
    total, computed = sum(rows.values()), sum(end - start for ranges in todo.values() for start, end in ranges)
    bar = tqdm(total=total, initial=total - computed, unit="img", desc=f"{spec.name} {spec.input_size}px",
               disable=not progress, smoothing=0.1)
    with bar:
        for split, ranges in todo.items():
            for start, end in ranges:
                compute_rows(dataset.splits[split].images, split, start, end, run, partial, batch_size,
                             spec.input_size, dtype, bar.update)
    return computed


def compute_rows(images, split, start, end, run, partial, batch_size, size, dtype, advance=None):
    """Rows start..end (whole chunks) of one split through ``run``, written chunk by chunk into ``partial``;
    ``advance(rows)`` after every batch. Sharded extraction (:mod:`featcache.distributed`) runs it on workers."""
    chunk, index = [], start // cache.CHUNK_ROWS
    for batch in HostBatches(images, start, end, batch_size, size):
        chunk.append(run(batch).astype(dtype))
        if advance:
            advance(len(chunk[-1]))
        if sum(map(len, chunk)) == cache.CHUNK_ROWS:
            partial.write_chunk(split, index, np.concatenate(chunk))
            chunk, index = [], index + 1
    if chunk:
        partial.write_chunk(split, index, np.concatenate(chunk))


def _row_ranges(indices: list[int], total_rows: int) -> list[tuple[int, int]]:
    """The rows of runs of consecutive chunks, each computed by one run of the image pipeline.

    Chunks [0, 1, 4] of 5000 rows -> [(0, 2048), (4096, 5000)].
    """
    ranges = []
    for index in indices:
        start, end = index * cache.CHUNK_ROWS, min((index + 1) * cache.CHUNK_ROWS, total_rows)
        if ranges and ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((start, end))
    return ranges
