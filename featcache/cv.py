"""Cross-validation of heads on cached features: the same stratified folds for every head and run.

The features are read from HDF5 once per run (:func:`load_features`); each head is then fitted on
each training fold (with an optional inner grid search that sees the training fold only), scored
on the held-out fold, refitted on the whole training split, optionally scored on the test split,
and written out as a result record with its fitted model (:func:`fit_heads`).
"""

import os
import time
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, log_loss, top_k_accuracy_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from featcache import heads
from featcache import records
from featcache.cache import FeatureCache
from featcache.errors import FeatcacheError

INNER_FOLDS = 3  # folds of the grid search inside each training fold


@dataclass
class Features:
    """Everything a head needs from one cache, read once."""

    cache: FeatureCache
    label_set: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None

    @property
    def class_names(self) -> list[str]:
        return self.cache.class_names[self.label_set]


def load_features(cache: FeatureCache, label_set: str | None = None) -> Features:
    """Read the training split (and the test split, when there is one) into memory, checking them."""
    label_set = label_set or cache.label_sets[0]
    train = "train" if "train" in cache.splits else cache.splits[0]
    y_train = cache.labels(train, label_set)
    x_train = _checked(cache.features(train).astype(np.float32, copy=False), train)
    x_test = y_test = None
    if "test" in cache.splits and train != "test":
        x_test = _checked(cache.features("test").astype(np.float32, copy=False), "test")
        y_test = cache.labels("test", label_set)
    return Features(cache, label_set, x_train, y_train, x_test, y_test)


def _checked(x: np.ndarray, split: str) -> np.ndarray:
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise FeatcacheError(f"{bad} rows of the {split} features contain NaN or inf: extract again with --force")
    return x


def fold_indices(y: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified, shuffled folds: the same indices for every head and run with this seed."""
    if folds < 2:
        raise FeatcacheError(f"--folds must be at least 2, got {folds}")
    counts = np.bincount(y)
    present = counts[counts > 0]
    if folds > present.min():
        smallest = int(np.flatnonzero(counts == present.min())[0])
        raise FeatcacheError(
            f"--folds {folds} is more than the {present.min()} examples of class {smallest}: use at most {present.min()}"
        )
    return list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def scores(estimator, x: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[dict, np.ndarray]:
    """The metrics of one fitted estimator on (x, y), and its predictions."""
    started = time.perf_counter()
    proba = _class_scores(estimator, x, n_classes, "predict_proba")
    decision = proba if proba is not None else _class_scores(estimator, x, n_classes, "decision_function")
    predicted = estimator.classes_[np.argmax(decision[:, estimator.classes_], axis=1)] if decision is not None \
        else estimator.predict(x)
    seconds = time.perf_counter() - started
    labels = np.arange(n_classes)
    metrics = {
        "accuracy": float(accuracy_score(y, predicted)),
        "top5_accuracy": float(top_k_accuracy_score(y, decision, k=5, labels=labels))
        if decision is not None and n_classes > 5 else None,
        "kappa": float(cohen_kappa_score(y, predicted)),
        "log_loss": float(log_loss(y, proba, labels=labels)) if proba is not None else None,
        "macro_f1": float(f1_score(y, predicted, average="macro", labels=np.unique(y))),
        "predict_seconds": round(seconds, 4),
    }
    return metrics, predicted


def _class_scores(estimator, x, n_classes, method):
    """predict_proba or decision_function laid out over all n_classes columns (absent classes score lowest)."""
    if not hasattr(estimator, method):
        return None
    raw = np.asarray(getattr(estimator, method)(x), dtype=np.float64)
    if raw.ndim == 1:  # binary decision_function: one column, positive class
        raw = np.column_stack([-raw, raw])
    out = np.full((len(x), n_classes), 0.0 if method == "predict_proba" else -np.inf)
    out[:, estimator.classes_] = raw
    if method == "decision_function":
        out[np.isinf(out)] = raw.min() - 1
    return out


def fit_one(estimator, grid: dict, x, y, seed: int):
    """Fit a fresh estimator on (x, y); with a grid, choose its parameters by inner CV on (x, y) alone."""
    started = time.perf_counter()
    chosen = None
    if grid:
        inner = StratifiedKFold(INNER_FOLDS, shuffle=True, random_state=seed)
        search = GridSearchCV(estimator, grid, cv=inner, scoring="accuracy", refit=True, n_jobs=1)
        search.fit(x, y)
        estimator, chosen = search.best_estimator_, search.best_params_
    else:
        estimator.fit(x, y)
    return estimator, chosen, round(time.perf_counter() - started, 4)


def _run_fold(name, params, grid, x, y, train, held_out, n_classes, seed, threads):
    from threadpoolctl import threadpool_limits

    # folds in parallel share the cores: OpenBLAS threads that outnumber them spin and slow everything down
    with threadpool_limits(threads):
        estimator, chosen, fit_seconds = fit_one(heads.make_head(name, **params), grid, x[train], y[train], seed)
        metrics, predicted = scores(estimator, x[held_out], y[held_out], n_classes)
    return {**metrics, "fit_seconds": fit_seconds, "chosen_params": chosen}, predicted


def cross_validate_head(name, params, grid, features: Features, folds, jobs: int = 1, progress=None):
    """Per-fold metrics and the summed out-of-fold confusion matrix of one head."""
    from joblib import Parallel, delayed
    from sklearn.metrics import confusion_matrix

    x, y, n_classes = features.x_train, features.y_train, len(features.class_names)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    tasks = (delayed(_run_fold)(name, params, grid, x, y, tr, te, n_classes, i, threads)
             for i, (tr, te) in enumerate(folds))
    fold_metrics, out_of_fold = [], np.empty_like(y)
    for (metrics, predicted), (_, held_out) in zip(Parallel(n_jobs=jobs, return_as="generator")(tasks), folds):
        fold_metrics.append(metrics)
        out_of_fold[held_out] = predicted
        if progress is not None:
            progress.update(1)
    matrix = confusion_matrix(y, out_of_fold, labels=np.arange(n_classes))
    return fold_metrics, matrix


def summarize(fold_metrics: list[dict]) -> dict:
    """Mean and standard deviation (ddof=1, as in the reference's fold table) of each numeric metric."""
    summary = {}
    for metric in fold_metrics[0]:
        values = [m[metric] for m in fold_metrics]
        if all(isinstance(v, (int, float)) for v in values):
            summary[metric] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1))}
    return summary


def fit_heads(head_names, features: Features, params=None, grid=None, folds=6, seed=0, test=False, jobs=1,
              root=None, progress=True) -> list[dict]:
    """Cross-validate each head, refit it on the whole training split, save it; return the records."""
    from sklearn.metrics import confusion_matrix
    from tqdm import tqdm

    params, grid = params or {}, grid or {}
    for name in head_names:  # every parameter and grid value is checked before any fitting starts
        heads.make_head(name, **params)
        for key, values in grid.items():
            for value in values:
                heads.make_head(name, **{**params, key: value})
    if test and features.x_test is None:
        raise FeatcacheError("--test needs a test split, and this cache has none")
    split = fold_indices(features.y_train, folds, seed)
    saved = []
    with tqdm(total=len(head_names) * len(split), unit="fold", disable=not progress) as bar:
        for name in head_names:
            bar.set_description(name)
            fold_metrics, matrix = cross_validate_head(name, params, grid, features, split, jobs, bar)
            final, chosen, fit_seconds = fit_one(heads.make_head(name, **params), grid, features.x_train,
                                                 features.y_train, seed)
            test_result = None
            if test:
                n_classes = len(features.class_names)
                metrics, predicted = scores(final, features.x_test, features.y_test, n_classes)
                matrix_test = confusion_matrix(features.y_test, predicted, labels=np.arange(n_classes))
                test_result = {**metrics, "fit_seconds": fit_seconds, "confusion_matrix": matrix_test}
            record = _record(name, final, chosen, features, folds, seed, fold_metrics, matrix, test_result)
            folder = records.record_folder(record["id"], root)
            folder.mkdir(parents=True, exist_ok=True)
            record["model_file"] = heads.save_head(final, folder)
            records.save_record(record, root)
            saved.append(record)
    return saved


def _record(name, final, chosen, features, folds, seed, fold_metrics, matrix, test_result) -> dict:
    provenance = features.cache.provenance
    backbone = provenance["backbone"]
    described = f"{backbone['name']}-{backbone['input_size']}-{backbone['pooling']}"
    tuned = "".join(f" {k}={v}" for k, v in (chosen or {}).items())
    return {
        "id": records.new_record_id(name),
        "created": records.now_iso(),
        "kind": "head",
        "approach": f"{name}{tuned} on {described}",
        "head": name,
        "params": {k: v for k, v in final.get_params(deep=False).items() if _is_plain(v)},
        "dataset": {
            "name": provenance["dataset"]["name"],
            "fingerprint": provenance["dataset"]["fingerprint"],
            "label_set": features.label_set,
            "class_names": features.class_names,
            "n_train": len(features.y_train),
            "n_test": None if features.y_test is None else len(features.y_test),
        },
        "features": {
            "cache_key": provenance["key"],
            "cache_file": str(features.cache.path),
            "backbone": backbone["name"],
            "backbone_args": backbone["options"],
            "weights": backbone["weights"],
            "seed": backbone["seed"],
            "weights_sha256": provenance["weights_sha256"],
            "input_size": backbone["input_size"],
            "pooling": backbone["pooling"],
            "preprocessing": provenance["preprocessing"],
            "dtype": provenance["dtype"],
        },
        "cv": {"folds": folds, "seed": seed, "fold_metrics": fold_metrics, "summary": summarize(fold_metrics),
               "confusion_matrix": matrix},
        "test": test_result,
        "versions": records.library_versions(),
        "machine": records.machine_info(),
    }


def _is_plain(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str, list, tuple, dict))


def parse_params(items) -> dict:
    """['C=0.1', 'kernel=rbf'] -> {'C': 0.1, 'kernel': 'rbf'} (numbers, true/false and none are converted)."""
    return {key: _value(text) for key, text in (_split(item, "--param") for item in items)}


def parse_grid(items) -> dict:
    """['C=0.01,0.1,1'] -> {'C': [0.01, 0.1, 1]}."""
    return {key: [_value(v) for v in text.split(",")] for key, text in (_split(item, "--grid") for item in items)}


def _split(item: str, option: str):
    key, sep, value = item.partition("=")
    if not sep or not key or not value:
        raise FeatcacheError(f"{option} {item!r} must look like name=value")
    return key, value


def _value(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
