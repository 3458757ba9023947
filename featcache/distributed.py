"""Extraction and cross-validation on a Dask cluster (``scheduler=`` or ``workers=``, see :mod:`featcache.cluster`).

Extraction (:func:`extract_distributed`): each split is cut into shards, contiguous row ranges of whole
cache chunks. A shard is one Dask task: its worker computes the shard's missing chunks into the entry's
``.partial`` folder, exactly as a local run does (so a worker killed mid-shard, retried by Dask, and a
client killed mid-run, rerun, both resume from the last whole chunk, and a local run can resume a
distributed one), then writes the shard file. Each worker builds the model once, on its first shard, and
keeps it for the others. When every shard is there the client writes the ``.h5``, whose features are a
virtual dataset over the shard files (:func:`featcache.cache.consolidate` copies it into one file).
Shards are whole batches in the same places as a local run, so with the same intra-op threads
(:func:`featcache.cluster.thread_env`) the features are bit-identical.

Cross-validation (:func:`fit_distributed`): :func:`featcache.cv.fit_heads` with every (head, fold) fit a
task on joblib's Dask backend, the training features scattered to the workers once.
"""

import hashlib
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featcache import cache, cluster, compute, records
from featcache.backbones import imagenet_weights_path, weights_sha256
from featcache.datasets import ArrayImages, FileImages
from featcache.errors import FeatcacheError, ParameterError
from featcache.extract import RULES, ExtractResult, _cached, _provenance, _row_ranges, compute_rows
from featcache.images import Framing
from featcache.images import feature_model, forward, largest_batch
from featcache.params import Rule, check, validate

SHARDS_PER_WORKER = 4  # default shard size: about this many shards per worker, for balance and short retries
SHARD_ROWS = [Rule(lambda r: isinstance(r, int) and r > 0 and r % cache.CHUNK_ROWS == 0,
                   f"a positive multiple of {cache.CHUNK_ROWS}"), None]
POLL_S = 0.5  # how often the client looks at the chunks on disk for its progress bar


@dataclass(frozen=True)
class Shard:
    split: str
    start: int
    stop: int


def plan_shards(rows: dict, shard_rows: int) -> list[Shard]:
    """Each split's rows cut into ranges of ``shard_rows`` (the last one shorter)."""
    return [Shard(split, start, min(start + shard_rows, total))
            for split, total in rows.items() for start in range(0, total, shard_rows)]


def default_shard_rows(rows: dict, workers: int) -> int:
    chunks = sum(len(cache.chunk_sizes(n)) for n in rows.values())
    return cache.CHUNK_ROWS * max(1, chunks // (SHARDS_PER_WORKER * workers))


def shard_images(images, start: int, stop: int):
    """Rows start..stop of an image source as a source of their own, what one shard task carries to its worker:
    a slice of the array, or of the file list (absolute: workers start elsewhere), never the whole dataset."""
    if isinstance(images, ArrayImages):
        return ArrayImages(images.array[start:stop])
    return FileImages([Path(p).absolute() for p in images.paths[start:stop]])


# --- on a worker -------------------------------------------------------------------------------

_MODELS = {}  # (spec, compute, tta) -> (model, seconds to build it): one per worker process, built by its first task
_BUILDING = threading.Lock()


def worker_model(spec, settings, weights_hash, tta="none"):
    """This worker's model for ``spec`` (built on first use, then kept); refused when the worker's Keras backend
    or weights file differ from the client's, which would give other features under the same key."""
    with _BUILDING:
        if (spec, settings, tta) not in _MODELS:
            if compute.backend_name() != settings.backend:
                raise FeatcacheError(f"a Dask worker uses the Keras backend {compute.backend_name()}, the client "
                                     f"{settings.backend}: set KERAS_BACKEND alike everywhere")
            started = time.perf_counter()
            model = feature_model(spec, settings, tta=tta)
            if weights_sha256(spec) != weights_hash:
                raise FeatcacheError(f"a Dask worker's {spec.name} weights file differs from the client's: "
                                     "give every host the same file")
            _MODELS[spec, settings, tta] = model, time.perf_counter() - started
    return _MODELS[spec, settings, tta]


def model_facts(spec, settings, weights_hash, tta="none") -> tuple[int, int, float]:
    """Task: the model's output width (of every feature set, side by side), the largest batch that fits this
    worker's device, and the seconds it took to build its model (0 if it already had it)."""
    built = (spec, settings, tta) in _MODELS
    model, seconds = worker_model(spec, settings, weights_hash, tta)
    return int(model.output_shape[-1]), largest_batch(model, spec.input_size, cache.CHUNK_ROWS), 0.0 if built else seconds


def extract_shard(shard: Shard, images, stem: str, manifest: dict, weights_hash, spec, settings, root) -> int:
    """Task: compute the shard's missing chunks (``images`` holds its rows only), write its shard file; return the
    rows computed."""
    target = cache.shard_file(stem, shard.split, shard.start, shard.stop, root)
    if cache.shard_problem(target, manifest["key"], shard.split, shard.start, shard.stop) is None:
        return 0
    partial = cache.PartialExtraction(stem, manifest, root)
    total, batch_size = manifest["rows"][shard.split], manifest["batch_size"]
    first, last = shard.start // cache.CHUNK_ROWS, -(-shard.stop // cache.CHUNK_ROWS)
    missing = partial.missing_chunks(shard.split, total, range(first, last))
    run = forward(worker_model(spec, settings, weights_hash, manifest["provenance"].get("tta", "none"))[0], batch_size)
    computed = 0
    for start, end in _row_ranges(missing, total):
        compute_rows(images, shard.split, start, end, run, partial, batch_size, Framing.of(spec), manifest["dtype"],
                     offset=shard.start)
        computed += end - start
    cache.write_shard_file(target, partial, shard.split, shard.start, shard.stop)
    return computed


# --- on the client -----------------------------------------------------------------------------


def extract_distributed(dataset, spec, root=None, batch_size: int | None = None, dtype: str = "float32",
                        force: bool = False, progress: bool = True, precision=None, xla=None, scheduler=None,
                        workers=None, shard_rows=None, tta: str = "none") -> ExtractResult:
    """:func:`featcache.extract.extract` on a Dask cluster: a running ``scheduler`` ("tcp://host:8786") or a local
    one of ``workers`` processes (an int, or "gpu"). The cache root must be a folder every worker sees (checked
    first). ``shard_rows``: rows per shard task, a multiple of the cache's chunk rows (default: about
    ``SHARDS_PER_WORKER`` shards per worker); ``batch_size`` defaults to the largest that fits a worker's device.
    The entry is named by the images' contents from the start (image files are hashed here first, once: the
    file index remembers them), and its features are shard files (see :mod:`featcache.cache`).
    """
    validate({"batch_size": batch_size, "dtype": dtype, "tta": tta}, RULES)
    check("shard_rows", shard_rows, SHARD_ROWS)
    if spec.weights == "none":  # Keras' seeded initialisers draw other numbers inside a Dask worker
        raise ParameterError("weights", spec.weights, "imagenet or a weights file on a Dask cluster (random "
                             "weights are not reproducible there: save them with model.save_weights)")
    settings = compute.resolve(precision, xla)
    if spec.weights == "imagenet" and not imagenet_weights_path(spec).is_file():
        feature_model(spec, settings)  # lets Keras download the file (or explain where to put it), as extract does
    weights_hash = weights_sha256(spec)
    cache.remove_leftovers(root)
    key = cache.cache_key(dataset.fingerprint, spec, weights_hash, dtype, settings, tta)
    stem = cache.cache_stem(dataset.name, spec, key)
    path = cache.file_path(stem, root)
    if path.is_file() and not force:
        return _cached(path)
    cache.check_writable(root)
    with cluster.connect(scheduler, workers) as client:
        root = cluster.check_shared_root(client, root).parent  # absolute: workers start elsewhere
        columns, largest, _ = client.submit(model_facts, spec, settings, weights_hash, tta, pure=False).result()
        width = columns // len(cache.feature_sets(tta))
        rows = {split: len(s.images) for split, s in dataset.splits.items()}
        feature_bytes = sum(rows.values()) * columns * np.dtype(dtype).itemsize
        cache.check_space(stem, feature_bytes, root)
        with cache.ExtractionLock(stem, root):
            if force:
                path.unlink(missing_ok=True)
                for folder in (cache.partial_dir(stem, root), cache.shards_dir(stem, root)):
                    shutil.rmtree(folder, ignore_errors=True)
            elif path.is_file():
                return _cached(path)  # another process finished it meanwhile
            started_with = cache.read_manifest(cache.partial_dir(stem, root))[0]
            if started_with.get("key") == key:  # resumed: the batches it started with
                batch_size = batch_size or started_with.get("batch_size")
            provenance = {**_provenance(dataset, spec, weights_hash, dtype, rows, tta), "compute": settings.to_record(),
                          "key": key}
            provenance["dataset"]["fingerprint"] = dataset.fingerprint
            manifest = {"key": key, "rows": rows, "width": columns, "dtype": dtype, "batch_size": batch_size or largest,
                        "provenance": provenance}
            with cache.reporting_full_disk(stem, feature_bytes, root):
                partial = cache.PartialExtraction(stem, manifest, root)
                shards = plan_shards(rows, shard_rows or default_shard_rows(rows, len(client.nthreads())))
                started = time.perf_counter()
                futures = [client.submit(extract_shard, shard,
                                         shard_images(dataset.splits[shard.split].images, shard.start, shard.stop),
                                         stem, manifest, weights_hash, spec, settings, root,
                                         key=_task_key(root, stem, shard))
                           for shard in shards]
                computed = _wait(client, futures, partial, rows, f"{spec.name} {spec.input_size}px", progress)
                seconds = time.perf_counter() - started
                provenance.update(width=width, seconds=round(seconds, 3), created=records.now_iso(),
                                  versions=records.library_versions(), shards=len(shards))
                splits = {split: {"rows": n, "width": width, "labels": dataset.splits[split].labels}
                          for split, n in rows.items()}
                files = {split: [(s.start, s.stop, cache.shard_file(stem, split, s.start, s.stop, root))
                                 for s in shards if s.split == split] for split in rows}
                cache.write_cache_file(path, partial, splits, dataset.class_names, provenance, dtype, shards=files)
            _remove_other_shards(stem, files, root)
            partial.remove()
    rate = computed / seconds if seconds else 0.0
    return ExtractResult(path, False, rows, width, seconds, rate, dataset.skipped, computed,
                         sum(rows.values()) - computed)


def _task_key(root: Path, stem: str, shard: Shard) -> str:
    """The same for a rerun (so Dask resumes a dead client's still-running task instead of starting a twin),
    different for another root."""
    where = hashlib.blake2b(str(root).encode(), digest_size=6).hexdigest()
    return f"featcache-{stem}-{where}-{shard.split}-{shard.start}-{shard.stop}"


def _wait(client, futures, partial, rows, description, progress) -> int:
    """Wait for every shard task, showing the rows whose chunks are on disk; the rows the tasks computed."""
    from tqdm import tqdm

    with tqdm(total=sum(rows.values()), unit="img", desc=description, disable=not progress) as bar:
        while not all(f.done() for f in futures) and not any(f.status == "error" for f in futures):
            bar.update(_rows_on_disk(partial, rows) - bar.n)
            time.sleep(POLL_S)
        computed = sum(client.gather(futures))  # raises the first task's error
        bar.update(bar.total - bar.n)
    return computed


def _rows_on_disk(partial, rows: dict) -> int:
    return sum(size for split, total in rows.items() for index, size in enumerate(cache.chunk_sizes(total))
               if partial.chunk_file(split, index).is_file())


def _remove_other_shards(stem: str, files: dict, root):
    """Shard files of an earlier run cut another way (other workers), which the finished entry does not read."""
    kept = {file for shards in files.values() for _, _, file in shards}
    for file in cache.shards_dir(stem, root).glob("*.h5"):
        if file not in kept:
            file.unlink(missing_ok=True)


def fit_distributed(estimators, features, grid=None, folds=6, seed=0, test=False, root=None, progress=True,
                    scheduler=None, workers=None, **options) -> list[dict]:
    """:func:`featcache.cv.fit_heads` with every (head, fold) fit a task on a Dask cluster (``scheduler`` or
    ``workers`` as in :func:`extract_distributed`; ``options``: fit_heads' sweep, shots, repeats), through
    joblib's Dask backend; the training features go to
    the workers once. Each task limits its BLAS threads to 1, as local folds do with ``jobs=-1``."""
    from featcache.cv import fit_heads

    with cluster.connect(scheduler, workers):
        import joblib

        with joblib.parallel_config(backend="dask", scatter=[features.x_train, features.y_train]):
            return fit_heads(estimators, features, grid, folds, seed, test, jobs=-1, root=root, progress=progress,
                             **options)
