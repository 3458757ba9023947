"""The HDF5 feature cache: one file per extraction, named by a content key.

A finished extraction is one file ``<features>/<stem>.h5``, named by :func:`cache_stem` after
the content key of :func:`cache_key`::

    attrs   format="featcache-features/2", key, complete=True,
            provenance (JSON: dataset, backbone, weights hash, sizes, versions, seconds, skipped files)
    /<split>/features            float32 or float16, (rows, width), chunked by rows, each chunk
                                 with a Fletcher-32 checksum that every read verifies (new in /2)
    /<split>/labels/<label set>  int64, (rows,)
    /classes/<label set>         class names, indexed by label

While it is being extracted, it is a folder ``<stem>.partial/`` instead: ``manifest.json`` plus one
``<split>-<chunk>.npy`` file per finished chunk of rows, each written under a temporary name and
renamed, so a process killed at any moment leaves only whole chunks behind. A rerun continues
after the last whole chunk; when every chunk is there, the HDF5 file is written under a temporary
name and renamed into place. So a ``.h5`` file is always complete, and an incomplete extraction is
visibly a ``.partial`` folder. ``<stem>.lock`` (an flock) keeps two processes off the same stem.

Sharding (for several processes or machines): each worker can write the same layout for its own
row range of a split, recorded in the ``rows`` attribute of ``/<split>/features``; an HDF5 virtual
dataset (``h5py.VirtualLayout``) over the shard files then reads them back as one array without
copying. The reader below only relies on ``/<split>/features`` being an array, virtual or not.
"""

import fcntl
import hashlib
import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np

from featcache import formats, paths
from featcache.errors import FeatcacheError
from featcache.files import atomic_path, write_atomically

FORMAT_NAME, FORMAT_VERSION = "featcache-features", 2
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"
KEY_VERSION = 1  # bump when the same key inputs start giving different features
CHUNK_ROWS = 1024  # rows per HDF5 chunk and per resumable .npy chunk
SPLIT_ORDER = ["train", "test", "val", "all"]  # the splits dataset loaders make, in display order


def split_order(split: str):
    """Known splits in SPLIT_ORDER, any other name after them, alphabetically."""
    return (SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER), split)


def cache_key(dataset_fingerprint: str, spec, weights_hash, dtype: str) -> str:
    """A hash of every input that decides the features: change any of them and the key changes."""
    inputs = {
        "format": f"{FORMAT_NAME}/{KEY_VERSION}",
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


def cache_stem(dataset_name: str, spec, key: str) -> str:
    """The file name (without suffix): readable parts, then the start of the key."""
    safe_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset_name)
    return f"{safe_name}-{spec.name}-{spec.input_size}-{spec.pooling}-{key[:12]}"


class FeatureCache:
    """Read access to one finished cache file; arrays are read whole, once."""

    def __init__(self, path):
        self.path = Path(path)
        if self.path.suffix == ".partial":
            raise FeatcacheError(f"{self.path.name} is incomplete: rerun `featcache extract` with the same options to resume")
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
        except OSError as exc:
            raise FeatcacheError(f"cannot read {self.path}: {exc}; remove it with `featcache cache rm`") from None

    @property
    def label_sets(self) -> list[str]:
        return list(self.class_names)

    def features(self, split: str) -> np.ndarray:
        self._check_split(split)
        with h5py.File(self.path, "r") as f:
            dataset = f[split]["features"]
            out = np.empty(dataset.shape, dtype=dataset.dtype)
            try:
                dataset.read_direct(out)
            except OSError as exc:  # a chunk whose Fletcher-32 checksum does not match its bytes
                raise FeatcacheError(f"the {split} features in {self.path} are damaged ({exc}): "
                                     "extract them again with force=True (featcache extract --force)") from None
            return out

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
    path = lock_path(stem, root)
    if not path.exists():
        return False
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


# --- the resumable in-progress folder ---------------------------------------------------------


class PartialExtraction:
    """Whole chunks of an unfinished extraction, one .npy file each, plus the manifest they belong to."""

    def __init__(self, stem: str, manifest: dict, root=None):
        self.folder = partial_dir(stem, root)
        self.manifest = manifest
        manifest_file = self.folder / "manifest.json"
        if manifest_file.is_file() and json.loads(manifest_file.read_text()).get("key") != manifest["key"]:
            shutil.rmtree(self.folder)  # a stem collision with other inputs: never mix their chunks
        self.folder.mkdir(parents=True, exist_ok=True)
        if not manifest_file.is_file():
            write_atomically(manifest_file, json.dumps(manifest, indent=2).encode())

    def chunk_file(self, split: str, index: int) -> Path:
        return self.folder / f"{split}-{index:06d}.npy"

    def rows_done(self, split: str, total_rows: int) -> int:
        """Rows covered by the unbroken run of whole chunks from the start of the split."""
        index = 0
        while self.chunk_file(split, index).is_file():
            index += 1
        return min(index * CHUNK_ROWS, total_rows)

    def write_chunk(self, split: str, index: int, features: np.ndarray):
        with atomic_path(self.chunk_file(split, index)) as tmp, open(tmp, "wb") as f:
            np.save(f, features)

    def read_split(self, split: str, total_rows: int):
        for index in range(-(-total_rows // CHUNK_ROWS)):
            yield np.load(self.chunk_file(split, index))

    def remove(self):
        shutil.rmtree(self.folder, ignore_errors=True)


def write_cache_file(path: Path, partial: PartialExtraction, splits: dict, class_names: dict, provenance: dict,
                     dtype: str):
    """Assemble the finished chunks into the HDF5 file, atomically (temporary name, then rename).

    ``splits`` maps split -> {"rows": n, "width": d, "labels": {label set: array}}.
    """
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["key"] = partial.manifest["key"]
        f.attrs["provenance"] = json.dumps(provenance)
        for split, info in splits.items():
            group = f.create_group(split)
            features = group.create_dataset(
                "features", shape=(info["rows"], info["width"]), dtype=dtype,
                chunks=(min(CHUNK_ROWS, info["rows"]), info["width"]), fletcher32=True,
            )
            features.attrs["rows"] = [0, info["rows"]]
            row = 0
            for chunk in partial.read_split(split, info["rows"]):
                features[row:row + len(chunk)] = chunk
                row += len(chunk)
            for label_set, labels in info["labels"].items():
                group.create_dataset(f"labels/{label_set}", data=np.asarray(labels, dtype=np.int64))
        for label_set, names in class_names.items():
            f.create_dataset(f"classes/{label_set}", data=np.array([n.encode() for n in names]))
        f.attrs["complete"] = True


# --- cache ls / info / verify / rm ------------------------------------------------------------


def list_entries(root=None) -> list[dict]:
    """Every cache file and unfinished extraction under the root, newest first."""
    folder = paths.features_dir(root)
    if not folder.is_dir():
        return []
    entries = []
    for path in folder.glob("*.h5"):
        entry = {"stem": path.stem, "path": path, "status": "complete", "bytes": path.stat().st_size}
        try:
            cache = FeatureCache(path)
            entry.update(provenance=cache.provenance, rows=cache.rows, width=cache.width, dtype=cache.dtype)
        except FeatcacheError:
            entry["status"] = "unreadable"
        entries.append(entry)
    for path in folder.glob("*.partial"):
        manifest_file = path / "manifest.json"
        manifest = json.loads(manifest_file.read_text()) if manifest_file.is_file() else {}
        stem = path.name[: -len(".partial")]
        total = sum(manifest.get("rows", {}).values())
        done = sum(len(np.load(c, mmap_mode="r")) for c in path.glob("*.npy"))
        status = "extracting" if is_locked(stem, root) else "incomplete"
        entries.append({"stem": stem, "path": path, "status": f"{status} {done}/{total} rows",
                        "bytes": sum(c.stat().st_size for c in path.iterdir()),
                        "provenance": manifest.get("provenance", {}), "rows": manifest.get("rows", {})})
    return sorted(entries, key=lambda e: e["path"].stat().st_mtime, reverse=True)


def find(ref, root=None) -> Path:
    """A cache file by path, by stem, or by a unique prefix of its stem or key."""
    path = Path(ref)
    if path.suffix == ".h5" and path.is_file():
        return path
    matches = [e["path"] for e in list_entries(root)
               if e["stem"].startswith(str(ref)) or e.get("provenance", {}).get("key", "").startswith(str(ref))]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise FeatcacheError(f"no cache matches {ref!r}: list caches with `featcache cache ls`")
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
    """Problems found in a cache file (empty when it is complete and consistent)."""
    path = Path(path)
    if path.suffix == ".partial":
        return ["incomplete extraction: rerun `featcache extract` with the same options to resume"]
    try:
        cache = FeatureCache(path)
    except FeatcacheError as exc:
        return [str(exc)]
    problems = []
    expected = cache.provenance.get("rows", {})
    for split in cache.splits:
        features = cache.features(split)
        if expected.get(split) not in (None, len(features)):
            problems.append(f"{split}: {len(features)} rows, provenance says {expected[split]}")
        if features.shape[1] != cache.width:
            problems.append(f"{split}: width {features.shape[1]}, expected {cache.width}")
        if not np.isfinite(features).all():
            problems.append(f"{split}: features contain NaN or inf")
        for label_set, names in cache.class_names.items():
            labels = cache.labels(split, label_set)
            if len(labels) != len(features):
                problems.append(f"{split}: {len(labels)} {label_set} labels for {len(features)} rows")
            elif len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
                problems.append(f"{split}: {label_set} labels outside 0..{len(names) - 1}")
    return problems


def remove(stem_path: Path, root=None):
    """Delete a cache file or an unfinished extraction (refused while a process is extracting it)."""
    stem = stem_path.name.removesuffix(".partial").removesuffix(".h5")
    if is_locked(stem, root):
        raise FeatcacheError(f"{stem} is being extracted by another process: stop it first")
    if stem_path.is_dir():
        shutil.rmtree(stem_path)
    else:
        stem_path.unlink(missing_ok=True)
    lock_path(stem, root).unlink(missing_ok=True)
