"""Result records: one JSON file per fitted approach, with full provenance, plus its saved model.

Every stage that produces a classifier (``fit`` for heads on cached features, ``finetune``,
``scratch``) writes one record through :func:`save_record`; ``report`` and ``predict`` read them
back through :func:`load_record` / :func:`list_records`. A record is a plain dict:

    {
      "format": "featcache-result/1",
      "id": "20261125-101500-svm-3f9a1c",          # folder name under <root>/results/
      "created": "2026-11-25T10:15:00+00:00",
      "kind": "head" | "finetune" | "scratch",
      "approach": "svm on mobilenetv2-224-avg",    # the row label in reports
      "head": "svm",                               # head or model name
      "params": {...},                             # the estimator's get_params(), JSON-able
      "dataset": {"name", "fingerprint", "label_set", "class_names": [...],
                  "n_train", "n_test"},
      "features": {"cache_key", "cache_file", "backbone", "backbone_args", "weights", "seed",
                   "weights_sha256", "input_size", "pooling", "preprocessing", "dtype"}
                  # null for finetune/scratch records (they record "model" provenance instead)
      "cv": {"folds", "seed",
             "fold_metrics": [{"accuracy", "top5_accuracy", "kappa", "log_loss", "macro_f1",
                               "fit_seconds", "predict_seconds"}, ...],
             "summary": {metric: {"mean", "std"}},
             "confusion_matrix": [[...]]}           # out-of-fold predictions, summed; or null
      "test": {"accuracy", "top5_accuracy", "kappa", "log_loss", "macro_f1",
               "fit_seconds", "predict_seconds", "confusion_matrix": [[...]]} or null,
      "model_file": "model.joblib" | "model.keras" | null,   # relative to the record folder
      "versions": {"featcache", "python", "numpy", "scikit-learn", "tensorflow", ...},
      "machine": {"platform", "processor", "cpu_count", "gpu"}
    }

Metrics a head cannot produce (log loss without probabilities) are null.
"""

import datetime
import json
import os
import platform
import secrets
import sys
from pathlib import Path

from featcache import paths
from featcache.errors import FeatcacheError

FORMAT = "featcache-result/1"
RECORD_FILE = "record.json"


def new_record_id(name: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{name}-{secrets.token_hex(3)}"


def library_versions() -> dict:
    """Versions of the libraries whose behaviour a result depends on (only those already imported)."""
    import featcache

    versions = {"featcache": featcache.__version__, "python": platform.python_version()}
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


def save_record(record: dict, root=None) -> Path:
    """Write ``record`` (which must carry an ``id``) atomically; return its folder."""
    folder = record_folder(record["id"], root)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"format": FORMAT, **record}
    tmp = folder / (RECORD_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=False, default=_jsonable))
    os.replace(tmp, folder / RECORD_FILE)
    return folder


def record_folder(record_id: str, root=None) -> Path:
    return paths.results_dir(root) / record_id


def load_record(ref, root=None) -> dict:
    """Load a record by id, by folder, or by the path of its record.json."""
    candidates = [Path(ref), Path(ref) / RECORD_FILE, record_folder(str(ref), root) / RECORD_FILE]
    for path in candidates:
        if path.is_file():
            record = json.loads(path.read_text())
            if record.get("format") != FORMAT:
                raise FeatcacheError(f"{path} is not a featcache result record (format {record.get('format')!r})")
            record["_folder"] = str(path.parent)
            return record
    raise FeatcacheError(f"no result record {ref!r}: list them with `featcache results ls`")


def list_records(root=None) -> list[dict]:
    """Every record under the results folder, oldest first."""
    folder = paths.results_dir(root)
    if not folder.is_dir():
        return []
    records = [load_record(p) for p in sorted(folder.glob(f"*/{RECORD_FILE}"))]
    return sorted(records, key=lambda r: r["created"])


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def _jsonable(value):
    """numpy scalars and arrays become plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a result record")
