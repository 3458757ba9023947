"""The HDF5 feature cache: one file per extraction, named by a content key.

A finished extraction is one file ``<features>/<stem>.h5``, named by :func:`cache_stem` after
the content key of :func:`cache_key`::

    attrs   format="featcache-features/2", key, complete=True,
            provenance (JSON: dataset, backbone, weights hash, sizes, versions, seconds, skipped files)
    /<split>/features            float32 or float16, (rows, width), chunked by rows, each chunk
                                 with a Fletcher-32 checksum that every read verifies (new in /2)
    /<split>/features_flip       extracted with tta="flip" only: the same of each image mirrored left to
                                 right, row for row, written and checked alike
    /<split>/labels/<label set>  int64, (rows,)
    /classes/<label set>         class names, indexed by label

While it is being extracted, it is a folder ``<stem>.partial/`` instead: ``manifest.json`` plus one
``<split>-<chunk>.npy`` file per finished chunk of rows (with tta="flip", each chunk holds the plain
and the mirrored features side by side, so both resume together), each written under a temporary name and
renamed, so a process killed at any moment leaves only whole chunks behind. A rerun continues
after the last whole chunk; when every chunk is there, the HDF5 file is written under a temporary
name and renamed into place. So a ``.h5`` file is always complete, and an incomplete extraction is
visibly a ``.partial`` folder. ``<stem>.lock`` (an flock) keeps two processes off the same stem.

A complete ``.h5`` wins: the ``.partial`` of a process killed between the rename and the removal, and
stray ``*.tmp`` files, are removed by the next listing or extraction that sees them (never while a
process holds their stem) and never count as a cache. A ``.partial`` whose manifest or chunks cannot
be read is listed as damaged, skipped where a cache is selected, and a rerun recomputes only the
damaged chunks. A full disk ends the run with a message, leaving whole chunks to resume from.

Sharding (for several processes or machines): each worker can write the same layout for its own
row range of a split, recorded in the ``rows`` attribute of ``/<split>/features``; an HDF5 virtual
dataset (``h5py.VirtualLayout``) over the shard files then reads them back as one array without
copying. The reader below only relies on ``/<split>/features`` being an array, virtual or not.
:mod:`featcache.distributed` writes such entries: ``<stem>.h5`` whose features are virtual, plus
``<stem>.shards/<split>-<start>-<stop>.h5``, named relative to the ``.h5`` so the root can move. The
shard files are part of the entry (listed, verified and removed with it; leftover cleanup keeps
them), and a missing or incomplete shard is an error on opening, never HDF5's fill values.
``consolidate`` turns such an entry into one ordinary file.
"""

import errno
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from featcache import files, formats, paths
from featcache.backbones import CROP_FRACTION
from featcache.errors import FeatcacheError
from featcache.files import atomic_path, lock_held, write_atomically

FORMAT_NAME, FORMAT_VERSION = "featcache-features", 2
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"
KEY_VERSION = 2  # bump when the same key inputs start giving different features (2: the fused model)
CHUNK_ROWS = 1024  # rows per HDF5 chunk and per resumable .npy chunk
SPLIT_ORDER = ["train", "test", "val", "all"]  # the splits dataset loaders make, in display order
TTAS = ("none", "flip", "flip-mean")  # test-time augmentation: none, flipped features beside the plain, their mean
FLIP = "features_flip"
FLIP_MODES = ("average", "train", "ignore")  # how a fit uses flip features (featcache.flips)


def feature_sets(tta: str) -> tuple[str, ...]:
    """The feature datasets of each split of a cache extracted with ``tta``, in the column order of its chunks."""
    return ("features", FLIP) if tta == "flip" else ("features",)


def split_order(split: str):
    """Known splits in SPLIT_ORDER, any other name after them, alphabetically."""
    return (SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER), split)


def cache_key(dataset_fingerprint: str, spec, weights_hash, dtype: str, compute, tta: str = "none") -> str:
    """A hash of every input that decides the features: change any of them and the key changes.

    ``compute``: the backend, precision and XLA setting (:class:`featcache.compute.Compute`); ``tta`` is
    hashed only when it is not "none", so the keys of caches made before it existed stay valid."""
    inputs = {
        "format": f"{FORMAT_NAME}/{KEY_VERSION}",
        "dataset": dataset_fingerprint,
        "backbone": spec.name,
        "options": list(spec.options),
        "input_size": spec.input_size,
        "pooling": spec.pooling,
        "weights": weights_hash or f"random-seed-{spec.seed}",
        "preprocessing": f"{spec.backbone.module}.preprocess_input",
        "resize": "bilinear" if spec.resize == "stretch" else f"crop-{CROP_FRACTION}",
        "dtype": dtype,
        "compute": compute.to_record(),
        **({"tta": tta} if tta != "none" else {}),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def cache_stem(dataset_name: str, spec, key: str) -> str:
    """The file name (without suffix): readable parts, then the start of the key."""
    safe_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset_name)
    return f"{safe_name}-{spec.name}-{spec.input_size}-{spec.pooling}-{key[:12]}"


class FeatureCache:
    """Read access to one finished cache file; arrays are read whole, once."""

    def __init__(self, path):
        self.path = Path(path)
        if self.path.suffix == ".partial":
            raise FeatcacheError(f"{self.path.name}: {unfinished_status(self.path)}")
        if not self.path.is_file():
            raise FeatcacheError(f"no cache file {self.path}: list caches with `featcache cache ls`")
        try:
            with h5py.File(self.path, "r") as f:
                self.version = formats.check_version(f.attrs.get("format"), FORMAT_NAME, FORMAT_VERSION, self.path)
                if not f.attrs.get("complete"):
                    raise FeatcacheError(f"{self.path} is not a complete featcache file: extract it again")
                self.key = str(f.attrs["key"])
                self.provenance = json.loads(f.attrs["provenance"])
                self.splits = sorted((s for s in f if s != "classes"), key=split_order)
                self.class_names = {k: [n.decode() for n in f["classes"][k][()]] for k in f["classes"]}
                self.rows = {s: f[s]["features"].shape[0] for s in self.splits}
                self.width = f[self.splits[0]]["features"].shape[1]
                self.dtype = str(f[self.splits[0]]["features"].dtype)
                self.feature_sets = tuple(name for name in ("features", FLIP) if name in f[self.splits[0]])
                self.shard_files = _check_shards(f, self.path, self.key, self.splits)
        except OSError as exc:
            raise FeatcacheError(f"cannot read {self.path}: {exc}; remove it with `featcache cache rm`") from None

    @property
    def label_sets(self) -> list[str]:
        return list(self.class_names)

    @property
    def tta(self) -> str:
        return self.provenance.get("tta", "none")

    @property
    def flip(self) -> bool:
        """Whether the cache holds the features of the mirrored images beside the plain ones (tta="flip")."""
        return FLIP in self.feature_sets

    def features(self, split: str, out: np.ndarray | None = None, column: int = 0, flip: bool = False) -> np.ndarray:
        """The features of ``split`` (with ``flip``, those of its images mirrored left to right); with ``out`` (rows,
        any width), read into its columns from ``column`` on, converted to its dtype, and ``out`` returned: fused
        caches, and an image's plain and flipped features, fill one array with no copy of each part."""
        self._check_split(split)
        with h5py.File(self.path, "r") as f:
            dataset = f[split][FLIP if flip else "features"]
            out = np.empty(dataset.shape, dtype=dataset.dtype) if out is None else out
            try:
                dataset.read_direct(out, dest_sel=np.s_[:, column:column + dataset.shape[1]])
            except OSError as exc:
                raise self._damaged(split, exc) from None
            return out

    def feature_chunks(self, split: str, name: str = "features"):
        """The features ``name`` of ``split``, one HDF5 chunk of rows at a time: every checksum read, little memory."""
        self._check_split(split)
        with h5py.File(self.path, "r") as f:
            dataset = f[split][name]
            for start in range(0, dataset.shape[0], CHUNK_ROWS):
                try:
                    yield dataset[start:start + CHUNK_ROWS]
                except OSError as exc:
                    raise self._damaged(split, exc) from None

    def _damaged(self, split: str, exc: OSError) -> FeatcacheError:
        """A chunk whose Fletcher-32 checksum does not match its bytes (or that cannot be read at all)."""
        return FeatcacheError(f"the {split} features in {self.path} are damaged ({exc}): "
                              "extract them again with force=True (featcache extract --force)")

    def labels(self, split: str, label_set: str) -> np.ndarray:
        self._check_split(split)
        if label_set not in self.class_names:
            raise FeatcacheError(
                f"this cache has no label set {label_set!r}: choose from {', '.join(self.label_sets)}"
            )
        with h5py.File(self.path, "r") as f:
            return f[split]["labels"][label_set][()]

    def _check_split(self, split):
        if split not in self.splits:
            raise FeatcacheError(f"this cache has no {split!r} split: it has {', '.join(self.splits)}")


# --- where things live ------------------------------------------------------------------------


def file_path(stem: str, root=None) -> Path:
    return paths.features_dir(root) / f"{stem}.h5"


def partial_dir(stem: str, root=None) -> Path:
    return paths.features_dir(root) / f"{stem}.partial"


def lock_path(stem: str, root=None) -> Path:
    return paths.features_dir(root) / f"{stem}.lock"


def stem_of(path: Path) -> str:
    """The stem of any file of an extraction: ``<stem>.h5``, ``.partial``, ``.lock``, or one of these ``.tmp``."""
    name = path.name.removesuffix(".tmp")
    for suffix in (".h5", ".partial", ".lock"):
        name = name.removesuffix(suffix)
    return name


def check_writable(root=None):
    """Create the features folder if needed; refuse now, not by a traceback later, when it cannot be written."""
    files.check_writable(paths.features_dir(root))


# --- disk space --------------------------------------------------------------------------------


def space_needed(stem: str, feature_bytes: int, root=None) -> int:
    """Bytes an extraction still has to write: its features as chunks, then again as the HDF5 file
    assembled from them (both exist until the chunks are removed), less the chunks already written."""
    written = sum(_size(c) for c in partial_dir(stem, root).glob("*.npy"))
    return max(2 * feature_bytes - written, 0)


def check_space(stem: str, feature_bytes: int, root=None):
    folder = paths.features_dir(root)
    needed, free = space_needed(stem, feature_bytes, root), shutil.disk_usage(folder).free
    if needed > free:
        raise FeatcacheError(f"extracting needs about {needed:,} bytes free in {folder}, but only {free:,} are free: "
                             "free some space there or pass another root (featcache --cache-dir)")


@contextmanager
def reporting_full_disk(stem: str, feature_bytes: int, root=None):
    """Turn a full disk into one line: Python's writes raise ENOSPC, HDF5 says it only in its message."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENOSPC and "No space left" not in str(exc):
            raise
        raise FeatcacheError(
            f"no space left in {paths.features_dir(root)}: about {space_needed(stem, feature_bytes, root):,} more "
            "bytes are needed there; free some space, then rerun to resume from the chunks already written"
        ) from None


def _size(path: Path) -> int:
    """The size of a file, 0 when another process removed it meanwhile."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


# --- the lock ----------------------------------------------------------------------------------


class ExtractionLock:
    """An exclusive, non-blocking flock: the kernel drops it when the process dies, even by SIGKILL."""

    def __init__(self, stem: str, root=None):
        self.path = lock_path(stem, root)

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise FeatcacheError(
                f"another featcache process is extracting {self.path.stem}: wait for it to finish, then rerun"
            ) from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def is_locked(stem: str, root=None) -> bool:
    return lock_held(lock_path(stem, root))


def _lock_beside(path: Path) -> Path:
    return path.with_name(f"{stem_of(path)}.lock")


# --- the resumable in-progress folder ---------------------------------------------------------


def chunk_sizes(total_rows: int) -> list[int]:
    """Rows in each chunk of a split of ``total_rows`` rows."""
    return [min(CHUNK_ROWS, total_rows - start) for start in range(0, total_rows, CHUNK_ROWS)]


def chunk_file(folder: Path, split: str, index: int) -> Path:
    return folder / f"{split}-{index:06d}.npy"


def chunk_problem(file: Path, rows: int, width=None, dtype=None) -> str | None:
    """Why ``file`` is not a whole chunk of ``rows`` rows (of ``width`` and ``dtype`` where given), None when it is.

    Only the header is read (memory-mapped), so checking every chunk of a large extraction is cheap; a file
    that vanished raises FileNotFoundError.
    """
    try:
        chunk = np.load(file, mmap_mode="r")
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError):
        return f"{file.name} is not a readable .npy chunk"
    shape = (rows, width or (chunk.shape[1] if chunk.ndim == 2 else -1))
    if chunk.shape != shape or chunk.dtype != np.dtype(dtype or chunk.dtype):
        return f"{file.name} holds {chunk.shape} {chunk.dtype}, expected {shape} {dtype or chunk.dtype}"
    return None


def read_manifest(folder: Path) -> tuple[dict, str | None]:
    """The manifest of an unfinished extraction, and what is wrong with it (None when nothing is)."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except FileNotFoundError:
        return {}, "manifest.json is missing"
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("rows"), dict):
        return {}, "manifest.json is not a featcache manifest"
    return manifest, None


class PartialExtraction:
    """Whole chunks of an unfinished extraction, one .npy file each, plus the manifest they belong to."""

    def __init__(self, stem: str, manifest: dict, root=None):
        self.folder = partial_dir(stem, root)
        self.manifest = manifest
        found, _ = read_manifest(self.folder)
        if found.get("key") not in (None, manifest["key"]):
            shutil.rmtree(self.folder)  # a stem collision with other inputs: never mix their chunks
        self.folder.mkdir(parents=True, exist_ok=True)
        if found.get("key") != manifest["key"]:  # new, or missing or garbage: chunks are checked one by one
            write_atomically(self.folder / "manifest.json", json.dumps(manifest, indent=2).encode())

    def chunk_file(self, split: str, index: int) -> Path:
        return chunk_file(self.folder, split, index)

    def missing_chunks(self, split: str, total_rows: int, indices=None) -> list[int]:
        """Indices of the chunks still to compute: absent, or damaged (wrong shape or dtype, unreadable);
        only among ``indices`` where given."""
        width, dtype = self.manifest.get("width"), self.manifest.get("dtype")
        missing, sizes = [], chunk_sizes(total_rows)
        for index in range(len(sizes)) if indices is None else indices:
            rows = sizes[index]
            try:
                damaged = chunk_problem(self.chunk_file(split, index), rows, width, dtype)
            except FileNotFoundError:
                damaged = "missing"
            if damaged:
                missing.append(index)
        return missing

    def write_chunk(self, split: str, index: int, features: np.ndarray):
        """Written by Python's own write, whose error on a full disk says ENOSPC (numpy's, to a file, does not)."""
        buffer = io.BytesIO()
        np.save(buffer, features)
        write_atomically(self.chunk_file(split, index), buffer.getbuffer())

    def read_split(self, split: str, total_rows: int):
        for index in range(len(chunk_sizes(total_rows))):
            yield np.load(self.chunk_file(split, index))

    def finishing(self, final: Path):
        """Note which finished file this folder becomes (it is named by its files' stats, that file by their
        contents), so a run killed after writing that file has this folder cleaned up as a leftover."""
        self.manifest = {**self.manifest, "finished": Path(final).name}
        write_atomically(self.folder / "manifest.json", json.dumps(self.manifest, indent=2).encode())

    def remove(self):
        shutil.rmtree(self.folder, ignore_errors=True)


def unfinished_status(folder: Path) -> str:
    """What is the matter with an unfinished extraction, and what to do about it."""
    if lock_held(_lock_beside(folder)):
        return "being extracted now by another process: wait for it to finish"
    problem = _partial_summary(folder)["problem"]
    if problem:
        return f"damaged ({problem}): rerun `featcache extract` with the same options to recompute what is damaged"
    return "incomplete: rerun `featcache extract` with the same options to resume"


def _partial_summary(folder: Path) -> dict:
    """Manifest, whole rows and the first problem of an unfinished extraction, tolerating files that vanish."""
    manifest, problem = read_manifest(folder)
    rows, done = manifest.get("rows", {}), 0
    for split, total in rows.items():
        for index, size in enumerate(chunk_sizes(total)):
            try:
                why = chunk_problem(chunk_file(folder, split, index), size, manifest.get("width"),
                                    manifest.get("dtype"))
            except FileNotFoundError:
                continue  # not computed yet, or removed meanwhile by the process finishing it
            problem, done = problem or why, done + (0 if why else size)
    return {"manifest": manifest, "rows": rows, "done": done, "problem": problem}


def write_cache_file(path: Path, partial: PartialExtraction, splits: dict, class_names: dict, provenance: dict,
                     dtype: str, shards: dict | None = None):
    """Assemble the finished chunks into the HDF5 file, atomically (temporary name, then rename).

    ``splits`` maps split -> {"rows": n, "width": d, "labels": {label set: array}}. ``shards`` maps split ->
    [(start, stop, shard file)]: the features are then a virtual dataset over those files (written by
    :func:`write_shard_file`) instead of a copy of the chunks. The provenance's ``tta`` says which feature
    datasets the chunks hold (:func:`feature_sets`).
    """
    names = feature_sets(provenance.get("tta", "none"))
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["key"] = provenance["key"]
        f.attrs["provenance"] = json.dumps(provenance)
        for split, info in splits.items():
            group = f.create_group(split)
            if shards:
                for name in names:
                    _virtual_features(group, name, path.parent, shards[split], info["width"], dtype)
            else:
                _write_features(group, partial.read_split(split, info["rows"]), 0, info["rows"], info["width"], dtype,
                                names)
            for label_set, labels in info["labels"].items():
                group.create_dataset(f"labels/{label_set}", data=np.asarray(labels, dtype=np.int64))
        for label_set, names in class_names.items():
            f.create_dataset(f"classes/{label_set}", data=np.array([n.encode() for n in names]))
        f.attrs["complete"] = True


def remove_leftovers(root=None):
    """Remove what finished or killed extractions left behind: the ``.partial`` of a stem whose complete
    ``.h5`` is there (killed between the two steps of finishing), the ``.shards`` of one whose complete ``.h5``
    reads none (consolidated, killed before removing them) and stray ``*.tmp`` files. A stem that a
    live process holds is left alone; on a read-only root nothing is removed, and nothing fails."""
    folder = paths.features_dir(root)
    finished = [p for p in folder.glob("*.partial") if _is_complete(p.with_suffix(".h5"))
                or _is_complete(folder / str(read_manifest(p)[0].get("finished", "-")))]
    consolidated = [p for p in folder.glob("*.shards") if _reads_no_shards(p.with_suffix(".h5"))]
    strays = [*folder.glob("*.tmp"), *folder.glob("*.partial/*.tmp"), *folder.glob("*.shards/*.tmp")]
    for path in [*finished, *consolidated, *strays]:
        owner = path if path.parent == folder else path.parent
        if lock_held(_lock_beside(owner)):
            continue
        try:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            pass  # read-only, or removed by another process meanwhile


def _write_features(group, chunks, start: int, stop: int, width: int, dtype: str, names=("features",)):
    """``group``/<name> for each of ``names``: rows start..stop of a split from ``chunks`` (arrays of whole chunks,
    the datasets' ``width`` columns side by side in the order of ``names``), Fletcher-32."""
    datasets = [group.create_dataset(name, shape=(stop - start, width), dtype=dtype,
                                     chunks=(min(CHUNK_ROWS, stop - start), width), fletcher32=True) for name in names]
    for dataset in datasets:
        dataset.attrs["rows"] = [start, stop]
    row = 0
    for chunk in chunks:
        for index, dataset in enumerate(datasets):
            dataset[row:row + len(chunk)] = chunk[:, index * width:(index + 1) * width]
        row += len(chunk)


def _is_complete(path: Path) -> bool:
    try:
        FeatureCache(path)
    except FeatcacheError:
        return False
    return True


# --- cache ls / info / verify / rm ------------------------------------------------------------


def list_entries(root=None) -> list[dict]:
    """Every cache file and unfinished extraction under the root, newest first.

    Leftovers of finished extractions are removed first and never listed; an entry that another process
    finishes or removes while it is read is left out; a damaged one has the status ``damaged: <why>``.
    """
    folder = paths.features_dir(root)
    if not folder.is_dir():
        return []
    remove_leftovers(root)
    entries = []
    for path in [*folder.glob("*.h5"), *folder.glob("*.partial")]:
        if path.suffix == ".partial" and path.with_suffix(".h5").is_file():
            continue  # a complete .h5 wins over what is left of its extraction
        try:
            entries.append(_file_entry(path) if path.suffix == ".h5" else _partial_entry(path))
        except FileNotFoundError:
            continue
    return sorted(entries, key=lambda e: e["mtime"], reverse=True)


def _file_entry(path: Path) -> dict:
    stat = path.stat()
    entry = {"stem": path.stem, "path": path, "status": "complete", "bytes": stat.st_size, "mtime": stat.st_mtime}
    try:
        cache = FeatureCache(path)
    except FeatcacheError as exc:
        return {**entry, "status": f"damaged: {exc}"}
    entry.update(bytes=stat.st_size + sum(map(_size, cache.shard_files)), shards=len(cache.shard_files))
    return {**entry, "provenance": cache.provenance, "rows": cache.rows, "width": cache.width, "dtype": cache.dtype}


def _partial_entry(folder: Path) -> dict:
    mtime, summary = folder.stat().st_mtime, _partial_summary(folder)
    state = "extracting" if lock_held(_lock_beside(folder)) else "incomplete"
    status = f"{state} {summary['done']}/{sum(summary['rows'].values())} rows"
    if summary["problem"] and state == "incomplete":
        status = f"damaged: {summary['problem']}"
    return {"stem": stem_of(folder), "path": folder, "status": status, "mtime": mtime,
            "bytes": sum(_size(f) for f in folder.iterdir()),
            "provenance": summary["manifest"].get("provenance", {}), "rows": summary["rows"]}


def matching(ref, root=None) -> tuple[list[Path], bool]:
    """The caches ``ref`` names (at least one), and whether it names one exactly (a path, or a whole stem)
    rather than by a prefix of stems or keys, which may name several."""
    path = Path(ref)
    if path.suffix in (".h5", ".partial") and path.exists():
        return [path], True
    entries = list_entries(root)
    exact = [e["path"] for e in entries if e["stem"] == str(ref)]
    if exact:
        return exact, True
    prefixed = [e["path"] for e in entries
                if e["stem"].startswith(str(ref)) or e.get("provenance", {}).get("key", "").startswith(str(ref))]
    if not prefixed:
        raise FeatcacheError(f"no cache matches {ref!r}: list caches with `featcache cache ls`")
    return prefixed, False


def find(ref, root=None) -> Path:
    """A cache file by path, by stem, or by a unique prefix of its stem or key."""
    matches, _ = matching(ref, root)
    if len(matches) == 1:
        return matches[0]
    raise FeatcacheError(f"{ref!r} matches {len(matches)} caches: give more of the name")


def select(root=None, ref=None, backbone=None, dataset=None) -> Path:
    """The cache named by ``ref``, else the most recent complete one matching backbone and dataset."""
    if ref:
        return find(ref, root)
    if dataset and dataset.startswith("folder:"):
        dataset = f"folder:{Path(dataset[len('folder:'):]).name}"  # loaders name folders by their last part
    matches = [e["path"] for e in list_entries(root) if e["status"] == "complete"
               and backbone in (None, e["provenance"]["backbone"]["name"])
               and dataset in (None, e["provenance"]["dataset"]["name"])]
    if not matches:
        wanted = " and ".join(f"{k} {v}" for k, v in (("backbone", backbone), ("dataset", dataset)) if v)
        raise FeatcacheError(f"no complete cache{' of ' + wanted if wanted else ''}: run `featcache extract` first")
    return matches[0]


def open_cache(ref=None, root=None, backbone=None, dataset=None) -> FeatureCache:
    """A finished cache by path, name prefix or key prefix; without ``ref`` the newest matching the filters."""
    return FeatureCache(select(root, ref, backbone, dataset))


def verify(path) -> list[str]:
    """Problems found in a cache file (empty when it is complete and consistent); every chunk is read."""
    path = Path(path)
    if path.suffix == ".partial":
        return [unfinished_status(path)]
    try:
        return _problems(FeatureCache(path))
    except FeatcacheError as exc:
        return [str(exc)]


def _problems(cache: FeatureCache) -> list[str]:
    problems = []
    expected = cache.provenance.get("rows", {})
    for split in cache.splits:
        width, finite = cache.width, True
        for chunk in (c for name in cache.feature_sets for c in cache.feature_chunks(split, name)):
            width, finite = chunk.shape[1], finite and bool(np.isfinite(chunk).all())
        rows = cache.rows[split]
        if expected.get(split) not in (None, rows):
            problems.append(f"{split}: {rows} rows, provenance says {expected[split]}")
        if width != cache.width:
            problems.append(f"{split}: width {width}, expected {cache.width}")
        if not finite:
            problems.append(f"{split}: features contain NaN or inf")
        for label_set, names in cache.class_names.items():
            labels = cache.labels(split, label_set)
            if len(labels) != rows:
                problems.append(f"{split}: {len(labels)} {label_set} labels for {rows} rows")
            elif len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
                problems.append(f"{split}: {label_set} labels outside 0..{len(names) - 1}")
    return problems


def remove(stem_path: Path, root=None):
    """Delete a cache file or an unfinished extraction (refused while a process is extracting it)."""
    stem = stem_of(stem_path)
    if is_locked(stem, root):
        raise FeatcacheError(f"{stem} is being extracted by another process: stop it first")
    if stem_path.is_dir():
        shutil.rmtree(stem_path)
    else:
        stem_path.unlink(missing_ok=True)
    shutil.rmtree(stem_path.with_name(f"{stem}.shards"), ignore_errors=True)
    lock_path(stem, root).unlink(missing_ok=True)


# --- sharded entries (see the module docstring and featcache.distributed) -------------------------


def shards_dir(stem: str, root=None) -> Path:
    return paths.features_dir(root) / f"{stem}.shards"


def shard_file(stem: str, split: str, start: int, stop: int, root=None) -> Path:
    return shards_dir(stem, root) / f"{split}-{start:09d}-{stop:09d}.h5"


def write_shard_file(path: Path, partial: PartialExtraction, split: str, start: int, stop: int):
    """Rows start..stop of ``split`` (whole chunks of ``partial``) as one shard file, atomically: the cache's own
    ``/<split>/features`` layout with its ``rows`` attribute, Fletcher-32, the key and ``complete``."""
    manifest, first = partial.manifest, start // CHUNK_ROWS
    chunks = (np.load(partial.chunk_file(split, first + i)) for i in range(len(chunk_sizes(stop - start))))
    names = feature_sets(manifest["provenance"].get("tta", "none"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["key"] = manifest["key"]
        _write_features(f.create_group(split), chunks, start, stop, manifest["width"] // len(names), manifest["dtype"],
                        names)
        f.attrs["complete"] = True


def shard_problem(path: Path, key: str, split: str, start: int, stop: int) -> str | None:
    """Why ``path`` is not the whole shard of rows start..stop of ``split`` of the features ``key``; None when it is."""
    try:
        with h5py.File(path, "r") as f:
            features = f[split]["features"]
            if f.attrs.get("complete") and str(f.attrs.get("key")) == key and list(features.attrs["rows"]) == [start, stop]:
                return None
            return f"shard {path} is incomplete or holds other features"
    except FileNotFoundError:
        return f"shard {path} is missing"
    except (OSError, KeyError) as exc:
        return f"shard {path} cannot be read ({exc})"


def _virtual_features(group, dataset: str, folder: Path, shards: list, width: int, dtype: str):
    """``group``/``dataset`` as a virtual dataset over shard files [(start, stop, file)], named relative to
    ``folder``."""
    rows = max(stop for _, stop, _ in shards)
    layout = h5py.VirtualLayout(shape=(rows, width), dtype=dtype)
    for start, stop, file in shards:
        name = os.path.relpath(file, folder)
        source = f"{group.name.lstrip('/')}/{dataset}"
        layout[start:stop] = h5py.VirtualSource(name, source, shape=(stop - start, width))
    features = group.create_virtual_dataset(dataset, layout, fillvalue=np.nan)
    features.attrs["rows"] = [0, rows]


def _check_shards(f: h5py.File, path: Path, key: str, splits: list) -> list[Path]:
    """The shard files an open cache file reads (none for an ordinary one); a missing or incomplete one is an error."""
    files = []
    for split in splits:
        features = f[split]["features"]
        for source in features.virtual_sources() if features.is_virtual else []:
            (start, _), (last, _) = source.vspace.get_select_bounds()
            file = path.parent / source.file_name
            problem = shard_problem(file, key, split, start, last + 1)
            if problem:
                raise FeatcacheError(f"{path.name}: {problem}: extract it again with force=True (featcache extract --force)")
            files.append(file)
    return files


def _reads_no_shards(path: Path) -> bool:
    """Whether ``path`` is a complete, ordinary (consolidated) cache file."""
    try:
        return not FeatureCache(path).shard_files
    except FeatcacheError:
        return False


def consolidate(path: Path, root=None) -> Path:
    """Copy a sharded entry into one ordinary cache file (atomically, in place), then remove its shard files."""
    found = FeatureCache(path)
    if not found.shard_files:
        return found.path
    with ExtractionLock(stem_of(found.path), root), h5py.File(found.path, "r") as source:
        with atomic_path(found.path) as tmp, h5py.File(tmp, "w") as f:
            for name, value in source.attrs.items():
                if name != "complete":
                    f.attrs[name] = value
            for split in found.splits:
                group = f.create_group(split)
                chunks = (np.hstack(c) for c in zip(*(found.feature_chunks(split, n) for n in found.feature_sets)))
                _write_features(group, chunks, 0, found.rows[split], found.width, found.dtype, found.feature_sets)
                source.copy(source[split]["labels"], group)
            source.copy(source["classes"], f)
            f.attrs["complete"] = True
    shutil.rmtree(found.path.with_name(f"{stem_of(found.path)}.shards"))
    return found.path
