"""Extraction: stream a dataset through a backbone, batch by batch, into the feature cache.

The host decodes images in threads, a few batches ahead of one compiled Keras model that resizes,
preprocesses and runs the backbone (:mod:`featcache.images`), so the resized dataset is never held in
memory and every Keras backend runs it. Features go to disk one chunk of rows at a time
(see :mod:`featcache.cache`), which makes a killed extraction resumable; because a chunk is a
whole number of batches, a resumed run feeds the model exactly the batches an uninterrupted run
would, and its features are identical.
"""

import glob
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featcache import cache, compute, records
from featcache.backbones import BackboneSpec, imagenet_weights_path, weights_sha256
from featcache.datasets import Dataset
from featcache.images import Framing, HostBatches, feature_model, forward, largest_batch
from featcache.params import Options, Rule, validate

DTYPES = ("float32", "float16")
RULES = {
    "batch_size": [Rule(lambda b: isinstance(b, int) and b > 0 and cache.CHUNK_ROWS % b == 0,
                        f"a divisor of {cache.CHUNK_ROWS} (e.g. 16, 32, 64, 128)"), None],
    "dtype": [Options(*DTYPES)],
    "tta": [Options(*cache.TTAS)],
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


def extract(dataset: Dataset, spec: BackboneSpec, root=None, batch_size: int | None = None, dtype: str = "float32",
            force: bool = False, progress: bool = True, precision: str | None = None,
            xla: bool | None = None, tta: str = "none") -> ExtractResult:
    """Extract (or find cached) features of every split of ``dataset``; return where they are.

    ``precision`` ("float32" or "mixed") and ``xla`` default to the fastest for the device found
    (:func:`featcache.compute.resolve`); both are part of the cache key. ``batch_size`` defaults to the
    largest that fits the device (:func:`featcache.images.largest_batch`); a resumed extraction reuses the
    one it started with, so its features equal an uninterrupted run's. ``tta``: "flip" also stores the features
    of every image mirrored left to right (``FeatureCache.features(split, flip=True)``), "flip-mean"
    only the mean of both; part of the cache key.
    Nothing is written before the inputs are known to be good (the model builds, the folder is writable
    and has room for the result), and a cache hit writes nothing, so it also works on a read-only root.
    """
    validate({"batch_size": batch_size, "dtype": dtype, "tta": tta}, RULES)
    settings = compute.resolve(precision, xla)
    model = None
    if spec.weights == "imagenet" and not imagenet_weights_path(spec).is_file():
        model = feature_model(spec, settings, tta=tta)  # lets Keras download the file (or explain where to put it)
    weights_hash = weights_sha256(spec)

    def key_of(fingerprint: str) -> str:
        return cache.cache_key(fingerprint, spec, weights_hash, dtype, settings, tta)

    def final_path(fingerprint: str) -> Path:
        return cache.file_path(cache.cache_stem(dataset.name, spec, key_of(fingerprint)), root)

    cache.remove_leftovers(root)
    known = dataset.known_fingerprint()  # None while an image file is new or changed: it is read below, once
    if known is None and not force and _similar_cache_exists(dataset, spec, root):
        known = dataset.fingerprint  # the same images moved or copied: hashing them is cheaper than extracting
    if known and final_path(known).is_file() and not force:
        return _cached(final_path(known))
    # The in-progress folder is named by the files' stats, so a rerun over the same files finds it; the
    # finished file by their contents, hashed as they are decoded.
    key = key_of(dataset.stat_fingerprint())
    stem = cache.cache_stem(dataset.name, spec, key)
    model = model or feature_model(spec, settings, tta=tta)
    rows = {split: len(s.images) for split, s in dataset.splits.items()}
    columns = int(model.output_shape[-1])  # of a chunk: every feature set's width columns side by side
    width = columns // len(cache.feature_sets(tta))
    feature_bytes = sum(rows.values()) * columns * np.dtype(dtype).itemsize
    cache.check_writable(root)
    cache.check_space(stem, feature_bytes, root)
    with cache.ExtractionLock(stem, root):
        if force:
            shutil.rmtree(cache.partial_dir(stem, root), ignore_errors=True)
            if known:
                final_path(known).unlink(missing_ok=True)
        elif known and final_path(known).is_file():
            return _cached(final_path(known))  # another process finished it meanwhile
        provenance = {**_provenance(dataset, spec, weights_hash, dtype, rows, tta), "compute": settings.to_record()}
        started_with = cache.read_manifest(cache.partial_dir(stem, root))[0]
        if started_with.get("key") == key:
            batch_size = batch_size or started_with.get("batch_size")
        batch_size = batch_size or largest_batch(model, spec.input_size, cache.CHUNK_ROWS)
        manifest = {"key": key, "rows": rows, "width": columns, "dtype": dtype, "batch_size": batch_size,
                    "provenance": provenance}
        with cache.reporting_full_disk(stem, feature_bytes, root):
            partial = cache.PartialExtraction(stem, manifest, root)
            started = time.perf_counter()
            computed = _run(dataset, spec, model, partial, rows, batch_size, dtype, progress)
            seconds = time.perf_counter() - started
            dataset.remember_hashes()
            path = final_path(dataset.fingerprint)  # from the hashes taken while decoding: no file is read again
            provenance["dataset"]["fingerprint"] = dataset.fingerprint
            provenance.update(key=key_of(dataset.fingerprint),
                              width=width, seconds=round(seconds, 3), created=records.now_iso(),
                              versions=records.library_versions())
            splits = {split: {"rows": n, "width": width, "labels": dataset.splits[split].labels}
                      for split, n in rows.items()}
            partial.finishing(path)
            if force or not path.is_file():  # else the same contents were cached under other file stats
                cache.write_cache_file(path, partial, splits, dataset.class_names, provenance, dtype)
        partial.remove()
    rate = computed / seconds if seconds else 0.0
    return ExtractResult(path, False, rows, width, seconds, rate, dataset.skipped, computed,
                         sum(rows.values()) - computed)


def _similar_cache_exists(dataset: Dataset, spec: BackboneSpec, root) -> bool:
    """Whether a finished cache of this dataset name and backbone, size and pooling exists: then images the
    file index does not know (a folder copied or unpacked again elsewhere) may still be cached by content."""
    prefix = cache.cache_stem(dataset.name, spec, "")
    return any(cache.file_path(prefix, root).parent.glob(f"{glob.escape(prefix)}*.h5"))


def _cached(path: Path) -> ExtractResult:
    found = cache.FeatureCache(path)
    return ExtractResult(path, True, found.rows, found.width, 0.0, 0.0, found.provenance["skipped"])


def _provenance(dataset, spec, weights_hash, dtype, rows, tta) -> dict:
    """What the features come from; the content key and fingerprint are added once the images are read."""
    return {
        "dataset": {"name": dataset.name, "label_sets": dataset.label_sets},
        "backbone": spec.to_record(),
        "weights_sha256": weights_hash,
        "preprocessing": spec.backbone.preprocessing,
        "dtype": dtype,
        "tta": tta,
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
                             Framing.of(spec), dtype, bar.update)
    return computed


def compute_rows(images, split, start, end, run, partial, batch_size, framing, dtype, advance=None, offset=0):
    """Rows start..end (whole chunks) of one split through ``run``, written chunk by chunk into ``partial``;
    ``advance(rows)`` after every batch. ``images`` holds the split's rows from ``offset`` on. Sharded
    extraction (:mod:`featcache.distributed`) runs it on workers."""
    chunk, index = [], start // cache.CHUNK_ROWS
    for batch in HostBatches(images, start - offset, end - offset, batch_size, framing):
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
