"""Result records: one JSON file per fitted approach, with full provenance, plus its saved model.

Every stage that produces a classifier (``fit`` for heads on cached features, ``finetune``,
``scratch``) builds its record with :func:`build_record` and writes it with :func:`save_record`;
``report`` and ``predict`` read them back through :func:`load_record` / :func:`list_records`.
A record is a plain dict:

    {
      "format": "featcache-result/3",
      "id": "20261125-101500-svm-3f9a1c",          # folder name under <root>/results/
      "created": "2026-11-25T10:15:00+00:00",
      "kind": "head" | "finetune" | "scratch",
      "approach": "svm on mobilenetv2(alpha=0.35)-224-avg",   # the row label in reports
      "head": "svm",                               # head or model name
      "params": {...},                             # the estimator's get_params(), JSON-able
      "dataset": {"name", "fingerprint", "label_set", "class_names": [...], "n_train", "n_test",
                  "class_counts": [training images per class] | null},
      "features": {"backbone": BackboneSpec.to_record(), "weights_sha256", "preprocessing", "dtype", "compute",
                   "cache_key", "cache_file",
                   "tta": "none" | "flip" | "flip-mean",   # the cache's test-time augmentation (absent: none)
                   "flip": "average" | "train" | "ignore" | null}   # how the fit used its flip features
                                                   # heads on cached features; null otherwise
                | {"parts": [one such dict per cache, in column order]}   # heads on fused caches (new in /3)
      "model": {"backbone": BackboneSpec.to_record() (finetune) | null, "architecture": null | "wrn-28-10",
                "weights_sha256", "input_size", "preprocessing", ...settings}   # finetune/scratch; null for heads
      "cv": {"folds", "seed", "grid": {parameter: values} | null (heads),
             "fold_metrics": [{"accuracy", "balanced_accuracy", "top5_accuracy", "kappa", "log_loss", "macro_f1",
                               "fit_seconds", "predict_seconds", "chosen_params",
                               "sweep_curve": [{"params", "accuracy"}, ...] (with a sweep)}, ...],
             "sweep": {Sweep.describe(), "final_curve": [...]} (heads fitted with sweep=True),
             "summary": {metric: {"mean", "std"}},
             "confusion_matrix": [[...]]}           # out-of-fold predictions, summed; or null
      "test": {... the same metrics ..., "confusion_matrix": [[...]]} or null,
      "history": {phase: [per-epoch logs]}         # finetune/scratch only
      "shots": {"repeats", "seed", "scored_on": "test" | "held-out folds",     # fit with shots only
                "points": [{"shots": k | "all", "accuracies": [per repeat], "balanced_accuracies": [...],
                            "fallback": {settings that hold out no rows} | null}, ...]},
      "model_file": "head.joblib" | "head.keras" | "model.keras" | null,   # relative to the record folder
      "versions": {"featcache", "python", "numpy", "scikit-learn", "tensorflow", ...},
      "machine": {"platform", "processor", "cpu_count", "gpu"}
    }

Metrics a head cannot produce (log loss without probabilities) are null. Older records are read
and migrated: version 1 (flat backbone fields) by :func:`migrate_v1`, version 2 (no fused features,
otherwise the same) as it is. :func:`feature_parts` gives the feature pipelines of either shape.

A folder without record.json is an unfinished run: a finetune/scratch run with its run.json
(resumable), a fit that is still writing (it holds fit.lock, :class:`RunLock`), or the leftover of
a killed fit, which :func:`remove_leftovers` removes.
"""

import datetime
import fcntl
import json
import os
import platform
import secrets
import shutil
import sys
from pathlib import Path

from featcache import formats, paths
from featcache._version import __version__
from featcache.errors import FeatcacheError
from featcache.files import lock_held, write_json

FORMAT_NAME, FORMAT_VERSION = "featcache-result", 3
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"
RECORD_FILE = "record.json"
RUN_FILE = "run.json"  # a resumable finetune/scratch run (featcache.training): never a leftover
LOCK_FILE = "fit.lock"  # held by the fit process writing the folder
REQUIRED = {"id": str, "created": str, "kind": str, "approach": str, "dataset": dict, "cv": dict}
REQUIRED_IN = {"dataset": {"name": str, "label_set": str, "class_names": list},
               "cv": {"folds": int, "seed": int, "summary": dict, "fold_metrics": list}}


def new_record_id(name: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{name}-{secrets.token_hex(3)}"


def library_versions() -> dict:
    """Versions of the libraries whose behaviour a result depends on (only those already imported)."""
    versions = {"featcache": __version__, "python": platform.python_version()}
    for module in ("numpy", "h5py", "sklearn", "keras", "tensorflow", "jax", "torch", "xgboost"):
        if module in sys.modules:
            versions[module] = getattr(sys.modules[module], "__version__", "unknown")
    return versions


def machine_info() -> dict:
    """The machine, and the Keras backend and GPU when this process has loaded Keras."""
    backend = sys.modules.get("featcache.backend")
    return {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "backend": backend.keras.backend.backend() if backend else None,
        "gpu": backend.gpu_names() if backend else None,
    }


def backbone_label(backbone: dict) -> str:
    """A backbone record as a short name with every option that changes its features:
    ``mobilenetv2(alpha=0.35)-224-avg``, then ``-random<seed>`` or ``-<weights file name>`` unless ImageNet's."""
    options = ",".join(f"{k}={v}" for k, v in sorted((backbone.get("options") or {}).items()))
    weights = backbone.get("weights") or "imagenet"
    source = {"imagenet": "", "none": f"-random{backbone.get('seed', 0)}"}.get(weights, f"-{Path(weights).name}")
    return (f"{backbone['name']}{f'({options})' if options else ''}-{backbone['input_size']}-{backbone['pooling']}"
            f"{source}")


def build_record(*, kind: str, name: str, approach: str, params: dict, dataset: dict, cv: dict, test,
                 features: dict | None = None, model: dict | None = None, history: dict | None = None,
                 record_id: str | None = None) -> dict:
    """The one record schema (see the module docstring); ``model_file`` is set once the model is saved."""
    record = {
        "id": record_id or new_record_id(name),
        "created": now_iso(),
        "kind": kind,
        "approach": approach,
        "head": name,
        "params": params,
        "dataset": dataset,
        "features": features,
        "model": model,
        "cv": cv,
        "test": test,
        "model_file": None,
        "versions": library_versions(),
        "machine": machine_info(),
    }
    if history is not None:
        record["history"] = history
    return record


def dataset_entry(name: str, fingerprint: str, label_set: str, class_names: list, n_train: int, n_test,
                  class_counts: list | None = None) -> dict:
    """``class_counts``: training images of each class (the report states the imbalance from them)."""
    return {"name": name, "fingerprint": fingerprint, "label_set": label_set, "class_names": class_names,
            "n_train": n_train, "n_test": n_test, "class_counts": class_counts}


def save_record(record: dict, root=None) -> Path:
    """Write ``record`` (which must carry an ``id``) atomically; return its folder. Keys starting with "_"
    (set when reading or fitting) are not stored."""
    folder = record_folder(record["id"], root)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"format": FORMAT, **{k: v for k, v in record.items() if not k.startswith("_")}}
    write_json(folder / RECORD_FILE, record, default=_jsonable)
    return folder


def record_folder(record_id: str, root=None) -> Path:
    return paths.results_dir(root) / record_id


def load_record(ref, root=None) -> dict:
    """Load a record by id, by folder, or by the path of its record.json (older formats migrated)."""
    candidates = [Path(ref), Path(ref) / RECORD_FILE, record_folder(str(ref), root) / RECORD_FILE]
    for path in candidates:
        if path.is_file():
            return read_record(path)
    raise FeatcacheError(f"no result record {ref!r}: list them with `featcache results ls`")


def read_record(path: Path) -> dict:
    """One record.json, checked and migrated to the current format; a FeatcacheError naming it when unreadable."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FeatcacheError(f"{path} is not readable JSON ({exc}): remove it with `featcache results rm`") from None
    if not isinstance(record, dict):
        raise FeatcacheError(f"{path} is not a featcache result record")
    version = formats.check_version(record.get("format"), FORMAT_NAME, FORMAT_VERSION, path, oldest=1)
    record = migrate_v1(record) if version == 1 else {**record, "format": FORMAT}
    missing = _missing(record, REQUIRED) or [f"{part}.{key}" for part, fields in REQUIRED_IN.items()
                                             for key in _missing(record[part], fields)]
    if missing:
        raise FeatcacheError(f"{path} lacks a valid {', '.join(missing)}: remove it with `featcache results rm`")
    record["_folder"] = str(Path(path).parent)
    return record


def _missing(values: dict, fields: dict) -> list[str]:
    """The fields absent from ``values`` or of another type (bool is no int)."""
    return [key for key, kind in fields.items()
            if not isinstance(values.get(key), kind) or (kind is int and isinstance(values[key], bool))]


def migrate_v1(record: dict) -> dict:
    """featcache-result/1 -> /3: the flat backbone fields become one ``backbone`` dict (BackboneSpec.to_record)."""
    record = {**record, "format": FORMAT}

    def nested(flat: dict, moved=("backbone", "backbone_args", "weights", "seed", "pooling", "input_size")) -> dict:
        out = {k: v for k, v in flat.items() if k not in moved}
        out["backbone"] = {"name": flat["backbone"], "options": flat.get("backbone_args") or {},
                           "input_size": flat["input_size"], "pooling": flat.get("pooling"),
                           "weights": flat.get("weights"), "seed": flat.get("seed", 0)}
        return out

    if record.get("features"):
        record["features"] = nested(record["features"])
    if record.get("model"):
        model = record["model"]
        # version 1 models take resized, preprocessed pixels; version 2 models take images
        if record.get("kind") == "finetune":
            record["model"] = {**nested(model, moved=("backbone", "backbone_args", "weights", "seed", "pooling")),
                               "architecture": None, "takes": "preprocessed"}
        else:
            record["model"] = {**{k: v for k, v in model.items() if k not in ("backbone", "backbone_args", "weights",
                                                                              "pooling")},
                               "backbone": None, "architecture": model["backbone"], "takes": "preprocessed"}
    else:
        record.setdefault("model", None)
    return record


def scan_records(root=None) -> tuple[list[dict], list[tuple[Path, str]]]:
    """(every readable record, oldest first; (path, problem) of each unreadable one).

    Folders of an unfinished or killed run (no record.json yet) are not records and are left out.
    """
    folder = paths.results_dir(root)
    if not folder.is_dir():
        return [], []
    found, unreadable = [], []
    for path in sorted(folder.glob(f"*/{RECORD_FILE}")):
        try:
            found.append(read_record(path))
        except FeatcacheError as exc:
            unreadable.append((path, str(exc)))
    return sorted(found, key=lambda r: str(r["created"])), unreadable


def list_records(root=None) -> list[dict]:
    """Every readable record under the results folder, oldest first."""
    return scan_records(root)[0]


def matching_folders(ref: str, root=None) -> list[Path]:
    """The record folders (readable or not) named ``ref``, else those whose name starts with it."""
    folders = sorted(p.parent for p in paths.results_dir(root).glob(f"*/{RECORD_FILE}"))
    exact = [f for f in folders if f.name == ref]
    return exact or [f for f in folders if f.name.startswith(ref)]


def remove_folder(folder: Path) -> None:
    """Remove a record folder: its record.json first, so a half-removed folder is never listed as a record."""
    (folder / RECORD_FILE).unlink(missing_ok=True)
    shutil.rmtree(folder)


class RunLock:
    """Marks a new result folder as owned by this process while it is written: an exclusive flock on its
    fit.lock, which the kernel drops when the process dies, even by SIGKILL. The folder is made under a
    hidden name (never a leftover) with the lock held, then renamed, so it is never seen unowned."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def __enter__(self):
        staging = self.folder.with_name(f".{self.folder.name}")
        staging.mkdir(parents=True)
        self.handle = open(staging / LOCK_FILE, "w")
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        staging.rename(self.folder)
        return self

    def __exit__(self, *exc):
        (self.folder / LOCK_FILE).unlink(missing_ok=True)
        self.handle.close()


def leftovers(root=None) -> list[Path]:
    """Folders a killed fit left under results/: no record.json, no run.json (a resumable training run),
    and no running process owns them."""
    folder = paths.results_dir(root)
    if not folder.is_dir():
        return []
    return [f for f in sorted(folder.iterdir()) if f.is_dir() and not f.name.startswith(".")
            and not (f / RECORD_FILE).exists()
            and not (f / RUN_FILE).exists() and not lock_held(f / LOCK_FILE)]


def remove_leftovers(root=None) -> list[Path]:
    """Remove :func:`leftovers`; return them."""
    found = leftovers(root)
    for folder in found:
        shutil.rmtree(folder)
    return found


def feature_parts(features: dict) -> list[dict]:
    """The feature pipelines of a record's ``features``, in the order of their columns: the ``parts`` of fused
    caches, else the one."""
    return features.get("parts") or [features]


def fit_settings(record: dict) -> str | None:
    """What makes two fitted heads the same fit (cache or fused caches in order, label set, head and its
    parameters, folds, seed, grid, test split, flip mode), as canonical JSON; None for finetune and scratch
    records."""
    if record["kind"] != "head" or not record.get("features"):
        return None
    grid = record["cv"].get("grid") or {}
    swept = (record["cv"].get("sweep") or {}).get("parameter")
    curve = record.get("shots")
    shots = [[p["shots"] for p in curve["points"]], curve["repeats"]] if curve else None
    chosen = {*grid, swept, *(record["cv"].get("sweep") or {}).get("also", {})}
    parts = feature_parts(record["features"])
    keys = [part.get("cache_key") for part in parts]
    return json.dumps([keys[0] if len(keys) == 1 else keys, record["dataset"]["label_set"], record["head"],
                       {k: v for k, v in record.get("params", {}).items() if k not in chosen}, record["cv"]["folds"],
                       record["cv"]["seed"], grid, swept, shots, record.get("test") is not None,
                       [part.get("flip") for part in parts]], sort_keys=True, default=_jsonable)


def pipelines(record: dict) -> list[dict]:
    """What produced the inputs of a record's model, flat, for tables: one dict per feature pipeline (several for
    fused caches) with the backbone (or architecture), its options, weights and hash, input size, pooling and
    cache key."""
    sources = feature_parts(record["features"]) if record.get("features") else [record.get("model") or {}]
    return [_pipeline(source) for source in sources]


def _pipeline(source: dict) -> dict:
    backbone = source.get("backbone") or {}
    return {"backbone": backbone.get("name") or source.get("architecture"), "options": backbone.get("options"),
            "weights": backbone.get("weights") or ("none" if source.get("architecture") else None),
            "weights_sha256": source.get("weights_sha256"),
            "input_size": backbone.get("input_size") or source.get("input_size"),
            "pooling": backbone.get("pooling"), "cache_key": source.get("cache_key")}


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def _jsonable(value):
    """numpy scalars and arrays become plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a result record")
