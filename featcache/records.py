"""Result records: one JSON file per fitted approach, with full provenance, plus its saved model.

Every stage that produces a classifier (``fit`` for heads on cached features, ``finetune``,
``scratch``) builds its record with :func:`build_record` and writes it with :func:`save_record`;
``report`` and ``predict`` read them back through :func:`load_record` / :func:`list_records`.
A record is a plain dict:

    {
      "format": "featcache-result/2",
      "id": "20261125-101500-svm-3f9a1c",          # folder name under <root>/results/
      "created": "2026-11-25T10:15:00+00:00",
      "kind": "head" | "finetune" | "scratch",
      "approach": "svm on mobilenetv2(alpha=0.35)-224-avg",   # the row label in reports
      "head": "svm",                               # head or model name
      "params": {...},                             # the estimator's get_params(), JSON-able
      "dataset": {"name", "fingerprint", "label_set", "class_names": [...], "n_train", "n_test"},
      "features": {"backbone": BackboneSpec.to_record(), "weights_sha256", "preprocessing", "dtype",
                   "cache_key", "cache_file"}     # heads on cached features; null otherwise
      "model": {"backbone": BackboneSpec.to_record() (finetune) | null, "architecture": null | "wrn-28-10",
                "weights_sha256", "input_size", "preprocessing", ...settings}   # finetune/scratch; null for heads
      "cv": {"folds", "seed",
             "fold_metrics": [{"accuracy", "top5_accuracy", "kappa", "log_loss", "macro_f1",
                               "fit_seconds", "predict_seconds"}, ...],
             "summary": {metric: {"mean", "std"}},
             "confusion_matrix": [[...]]}           # out-of-fold predictions, summed; or null
      "test": {... the same metrics ..., "confusion_matrix": [[...]]} or null,
      "history": {phase: [per-epoch logs]}         # finetune/scratch only
      "model_file": "head.joblib" | "head.keras" | "model.keras" | null,   # relative to the record folder
      "versions": {"featcache", "python", "numpy", "scikit-learn", "tensorflow", ...},
      "machine": {"platform", "processor", "cpu_count", "gpu"}
    }

Metrics a head cannot produce (log loss without probabilities) are null. Version 1 records (flat
backbone fields) are read and migrated by :func:`migrate_v1`.
"""

import datetime
import json
import os
import platform
import secrets
import sys
from pathlib import Path

from featcache import formats, paths
from featcache._version import __version__
from featcache.errors import FeatcacheError
from featcache.files import write_json

FORMAT_NAME, FORMAT_VERSION = "featcache-result", 2
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"
RECORD_FILE = "record.json"


def new_record_id(name: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{name}-{secrets.token_hex(3)}"


def library_versions() -> dict:
    """Versions of the libraries whose behaviour a result depends on (only those already imported)."""
    versions = {"featcache": __version__, "python": platform.python_version()}
    for module in ("numpy", "h5py", "sklearn", "tensorflow", "keras", "xgboost"):
        if module in sys.modules:
            versions[module] = getattr(sys.modules[module], "__version__", "unknown")
    return versions


def machine_info() -> dict:
    gpu = None
    if "tensorflow" in sys.modules:
        gpus = sys.modules["tensorflow"].config.list_physical_devices("GPU")
        gpu = ", ".join(g.name for g in gpus) or None
    return {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpu": gpu,
    }


def backbone_label(backbone: dict) -> str:
    """A backbone record as a short name with every option that changes its features:
    ``mobilenetv2(alpha=0.35)-224-avg``."""
    options = ",".join(f"{k}={v}" for k, v in sorted((backbone.get("options") or {}).items()))
    return f"{backbone['name']}{f'({options})' if options else ''}-{backbone['input_size']}-{backbone['pooling']}"


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


def dataset_entry(name: str, fingerprint: str, label_set: str, class_names: list, n_train: int, n_test) -> dict:
    return {"name": name, "fingerprint": fingerprint, "label_set": label_set, "class_names": class_names,
            "n_train": n_train, "n_test": n_test}


def save_record(record: dict, root=None) -> Path:
    """Write ``record`` (which must carry an ``id``) atomically; return its folder."""
    folder = record_folder(record["id"], root)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"format": FORMAT, **{k: v for k, v in record.items() if k != "_folder"}}
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
    version = formats.check_version(record.get("format"), FORMAT_NAME, FORMAT_VERSION, path)
    if version == FORMAT_VERSION - 1:
        record = migrate_v1(record)
    missing = [key for key in ("id", "created", "kind", "approach", "dataset", "cv") if key not in record]
    if missing:
        raise FeatcacheError(f"{path} lacks {', '.join(missing)}: remove it with `featcache results rm`")
    record["_folder"] = str(Path(path).parent)
    return record


def migrate_v1(record: dict) -> dict:
    """featcache-result/1 -> /2: the flat backbone fields become one ``backbone`` dict (BackboneSpec.to_record)."""
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
        if record.get("kind") == "finetune":
            record["model"] = {**nested(model, moved=("backbone", "backbone_args", "weights", "seed", "pooling")),
                               "architecture": None}
        else:
            record["model"] = {**{k: v for k, v in model.items() if k not in ("backbone", "backbone_args", "weights",
                                                                              "pooling")},
                               "backbone": None, "architecture": model["backbone"]}
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


def pipeline(record: dict) -> dict:
    """What produced the inputs of a record's model, flat, for tables: backbone (or architecture), its
    options, weights and hash, input size, pooling and cache key."""
    source = record.get("features") or record.get("model") or {}
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
