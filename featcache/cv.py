"""Cross-validation of heads on cached features: the same stratified folds for every head and run.

The features are read from HDF5 once per run (:func:`load_features`), from one cache or fused from
several caches of the same images (their columns side by side); each head (any scikit-learn
classifier, cloned for every fit) is then fitted on each training fold (with an optional inner grid
search that sees the training fold only), scored on the held-out fold, refitted on the whole
training split, optionally scored on the test split, and written out as a result record with its
fitted model (:func:`fit_heads`). A rerun with identical settings replaces its earlier record (the
new one is written first), and a fit first removes the leftovers of killed fits
(:func:`featcache.records.remove_leftovers`).
"""

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, ParameterGrid, StratifiedKFold

from featcache import flips, heads, paths, records, shots as few_shot, sweeps
from featcache.cache import FeatureCache
from featcache.errors import FeatcacheError
from featcache.evaluation import confusion, fold_indices, scores, summarize
from featcache.files import check_writable
from featcache.params import BOOLEAN, Interval, Options, check

INNER_FOLDS = 3  # folds of the grid search inside each training fold


@dataclass
class Features:
    """Everything a head needs from one cache (or several fused ones), read once. ``paired``: each row of x
    holds an image's plain features, then its flipped ones (:mod:`featcache.flips`)."""

    cache: FeatureCache  # the first cache: class names and dataset (all fused caches share them)
    label_set: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    fused_with: tuple[FeatureCache, ...] = ()  # the caches whose columns follow ``cache``'s, in order
    paired: bool = False

    @property
    def class_names(self) -> list[str]:
        return self.cache.class_names[self.label_set]

    @property
    def caches(self) -> list[FeatureCache]:
        """Every cache whose columns the features hold, in column order."""
        return [self.cache, *self.fused_with]


def load_features(caches, label_set: str | None = None, flip: bool = True) -> Features:
    """Read the training split (and the test split, when there is one) into memory, checking them.

    ``caches``: one FeatureCache, or several of the same images (two backbones, input sizes or poolings), whose
    features are fused: their columns side by side in the order given, once :func:`check_fusable` finds the
    same images in the same rows. float16 features stay float16 (the heads widen them a chunk at a time) when
    every cache's are; other dtypes become float32. ``flip``: when every cache has flip features, each row holds
    the image's plain features, then its flipped ones, in the same order (twice the memory; ``Features.paired``)."""
    caches = list(caches) if isinstance(caches, (list, tuple)) else [caches]
    if not caches:
        raise FeatcacheError("no cache to read features from: give at least one")
    first = caches[0]
    for index, other in enumerate(caches[1:], 1):
        if any(earlier.key == other.key for earlier in caches[:index]):
            raise FeatcacheError(f"{other.path.name} is given twice: give each cache to fuse once")
        check_fusable(first, other)
    paired = flip and all(found.flip for found in caches)
    label_set = label_set or first.label_sets[0]
    train = "train" if "train" in first.splits else first.splits[0]
    y_train = first.labels(train, label_set)
    x_train = _checked(_side_by_side(caches, train, paired), train)
    x_test = y_test = None
    if "test" in first.splits and train != "test":
        x_test = _checked(_side_by_side(caches, "test", paired), "test")
        y_test = first.labels("test", label_set)
    return Features(first, label_set, x_train, y_train, x_test, y_test, tuple(caches[1:]), paired)


def check_fusable(first: FeatureCache, other: FeatureCache) -> None:
    """Refuse, in one line naming both caches, two caches whose rows are not the same images: another dataset
    fingerprint, other splits or row counts, other label sets or class names, or labels that differ row by row."""
    def rows(found):
        return ", ".join(f"{split} {n}" for split, n in found.rows.items())

    def fingerprint(found):
        return str(found.provenance["dataset"].get("fingerprint"))

    def label_sets(found):
        return ", ".join(f"{name} ({len(classes)} classes)" for name, classes in found.class_names.items())

    if fingerprint(first) != fingerprint(other):
        problem = (f"they hold other images (dataset fingerprint {fingerprint(first)[:12]} vs "
                   f"{fingerprint(other)[:12]})")
    elif first.rows != other.rows:
        problem = f"their splits differ ({rows(first)} vs {rows(other)})"
    elif first.class_names != other.class_names:
        problem = f"their label sets differ ({label_sets(first)} vs {label_sets(other)})"
    else:
        problem = next((f"their {name!r} labels of the {split} split differ row by row" for split in first.splits
                        for name in first.label_sets
                        if not np.array_equal(first.labels(split, name), other.labels(split, name))), None)
    if problem:
        raise FeatcacheError(f"cannot fuse {first.path.name} with {other.path.name}: {problem}; fused caches must "
                             "hold the same images: extract each backbone from the same dataset")


def _side_by_side(caches: list[FeatureCache], split: str, paired: bool = False) -> np.ndarray:
    """The features of ``split``, each cache's columns after the previous one's, read into one array; ``paired``:
    then the flipped features of each, in the same order."""
    dtype = np.float16 if all(c.dtype == "float16" for c in caches) else np.float32
    views = (False, True) if paired else (False,)
    out = np.empty((caches[0].rows[split], len(views) * sum(c.width for c in caches)), dtype=dtype)
    column = 0
    for flip in views:
        for found in caches:
            found.features(split, out, column, flip=flip)
            column += found.width
    return out


def _checked(x: np.ndarray, split: str) -> np.ndarray:
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise FeatcacheError(f"{bad} rows of the {split} features contain NaN or inf: extract again with force=True (featcache extract --force)")
    return x


def fit_one(estimator, grid: dict, x, y, seed: int, owned: bool = False):
    """Fit a clone of ``estimator`` on (x, y); with a grid, choose its parameters by inner CV on (x, y) alone.

    ``owned``: x is the caller's own copy, which an estimator with a ``copy`` parameter may overwrite
    (``copy=False``: a head standardises it in place instead of copying it again)."""
    started = time.perf_counter()
    chosen = None
    if owned and "copy" in estimator.get_params(deep=False):
        estimator = clone(estimator).set_params(copy=False)
    if grid:
        inner = StratifiedKFold(INNER_FOLDS, shuffle=True, random_state=seed)
        search = GridSearchCV(estimator, grid, cv=inner, scoring="accuracy", refit=True, n_jobs=1)
        search.fit(x, y)
        estimator, chosen = search.best_estimator_, search.best_params_
    else:
        estimator = clone(estimator).fit(x, y)
    return estimator, chosen, round(time.perf_counter() - started, 4)


def _run_fold(estimator, grid, x, y, train, held_out, n_classes, seed, threads):
    from threadpoolctl import threadpool_limits

    # folds in parallel share the cores: OpenBLAS threads that outnumber them spin and slow everything down
    with threadpool_limits(threads):
        # x[train] is this fold's own copy: the head may standardise it in place (peak: x + one fold copy)
        fitted, chosen, fit_seconds = fit_one(estimator, grid, x[train], y[train], seed, owned=True)
        metrics, predicted = scores(fitted, x[held_out], y[held_out], n_classes)
    return {**metrics, "fit_seconds": fit_seconds, "chosen_params": chosen, **sweeps.outcome(fitted)}, predicted


def cross_validate_head(estimator, grid, features: Features, folds, jobs: int = 1, progress=None):
    """Per-fold metrics and the summed out-of-fold confusion matrix of one head."""
    from joblib import Parallel, delayed

    x, y, n_classes = features.x_train, features.y_train, len(features.class_names)
    cores = os.cpu_count() or 1
    threads = max(1, cores // (cores if jobs == -1 else jobs))  # -1 stays -1: on Dask, every worker thread
    tasks = (delayed(_run_fold)(estimator, grid, x, y, tr, te, n_classes, i, threads)
             for i, (tr, te) in enumerate(folds))
    fold_metrics, out_of_fold = [], np.empty_like(y)
    for (metrics, predicted), (_, held_out) in zip(Parallel(n_jobs=jobs, return_as="generator")(tasks), folds):
        fold_metrics.append(metrics)
        out_of_fold[held_out] = predicted
        if progress is not None:
            progress.update(1)
    return fold_metrics, confusion(y, out_of_fold, n_classes)


def named_heads(estimators) -> dict:
    """{record name: estimator} from a mapping, or from estimators named by their registry name (else class)."""
    if isinstance(estimators, Mapping):
        return dict(estimators)
    return {heads.name_of(e): e for e in estimators}


def check_grid(estimator, grid: dict) -> None:
    """Every grid point is a valid setting of ``estimator``, checked before any fitting starts."""
    for point in ParameterGrid(grid or {}):
        heads.check_params(clone(estimator).set_params(**point))


def fit_heads(estimators, features: Features, grid=None, folds=6, seed=0, test=False, jobs=1, root=None,
              progress=True, sweep=False, shots=None,
              repeats=few_shot.REPEATS, flip="average") -> list[dict]:
    """Cross-validate each head, refit it on the whole training split, save it; return the records.

    ``estimators``: scikit-learn classifiers (``{name: estimator}`` or a list), cloned for every fit;
    ``grid``: {parameter: values} chosen by inner CV on each training fold; ``sweep``: each head's built-in sweep
    (:mod:`featcache.sweeps`) on a validation slice of each training fold instead; ``jobs``: folds fitted in
    parallel (-1: one per core, as in joblib); ``shots``: images per class (ints, "all") of a learning curve
    of each head with its final settings, over ``repeats`` seeded draws (:mod:`featcache.shots`); ``flip``: with
    paired features (a cache extracted with tta="flip"), "average" scores every image by the mean of the head's
    probabilities on it and its flip, "train" also trains on the flips, "ignore" uses the plain features only
    (:mod:`featcache.flips`).
    """
    from tqdm import tqdm

    named = named_heads(estimators)
    check("jobs", jobs, [Options(-1), Interval(int, 1, None)])
    check("sweep", sweep, [Options(False)] if grid else [BOOLEAN], owner="grid chooses the parameters" if grid else None)
    check("flip", flip, *_flip_rule(features))
    for estimator in named.values():
        heads.check_params(estimator)
        check_grid(estimator, sweeps.sweep_of(estimator).grid() if sweep else grid)
    check_writable(paths.results_dir(root))  # before the work, not after it
    if test and features.x_test is None:
        raise FeatcacheError("test=True needs a test split, and this cache has none")
    split = fold_indices(features.y_train, folds, seed)
    shots = few_shot.parse_shots(shots) if shots else None
    for pool in ([np.arange(len(features.y_train))] if features.x_test is not None else [t for t, _ in split]):
        few_shot.check_shots(shots or [], features.y_train[pool])
    records.remove_leftovers(root)
    earlier = records.list_records(root)
    saved = []
    with tqdm(total=len(named) * len(split), unit="fold", disable=not progress) as bar:
        for name, estimator in named.items():
            bar.set_description(name)
            estimator = flips.Flipped(estimator, flip) if features.paired else estimator
            estimator = sweeps.Swept(estimator, seed) if sweep else estimator
            fold_metrics, matrix = cross_validate_head(estimator, grid, features, split, jobs, bar)
            final, chosen, fit_seconds = fit_one(estimator, grid, features.x_train, features.y_train, seed)
            swept = sweeps.outcome(final)
            final, chosen = (final.best_estimator_, swept["chosen_params"]) if swept else (final, chosen)
            test_result = None
            if test:
                n_classes = len(features.class_names)
                metrics, predicted = scores(final, features.x_test, features.y_test, n_classes)
                test_result = {**metrics, "fit_seconds": fit_seconds,
                               "confusion_matrix": confusion(features.y_test, predicted, n_classes)}
            record = _record(name, final, chosen, grid, features, folds, seed, fold_metrics, matrix, test_result,
                             flip if features.paired else "ignore")
            if shots:
                record["shots"] = few_shot.learning_curve(final, features, split, shots, repeats, seed)
            if swept:
                record["cv"]["sweep"] = {**sweeps.sweep_of(final).describe(), "final_curve": swept["sweep_curve"]}
            saved.append(_save(record, final, earlier, root))
    return saved


def _flip_rule(features: Features) -> tuple[list, str | None]:
    """The flip modes ``features`` allow, and why not the others: every mode on paired features; only ignore
    when some fused caches have flip features and others do not; else average (the same as ignore) or ignore."""
    if features.paired:
        return [Options(*flips.MODES)], None
    if 0 < sum(found.flip for found in features.caches) < len(features.caches):
        return [Options("ignore")], "not every fused cache has flip features (extract each with tta='flip')"
    return [Options("average", "ignore")], ("this cache has no flip features (extract with tta='flip', featcache "
                                            "extract --tta flip)")


def _save(record: dict, head, earlier: list[dict], root) -> dict:
    """Save the head and its record, then remove the earlier records of an identical fit, which it replaces
    (listed in the returned record's ``_replaced``)."""
    folder = records.record_folder(record["id"], root)
    with records.RunLock(folder):
        record["model_file"] = heads.save_head(flips.unwrapped(head), folder)  # the record says how to pair it
        records.save_record(record, root)
    same = records.fit_settings(record)
    replaced = [r for r in earlier if records.fit_settings(r) == same]
    for old in replaced:
        records.remove_folder(Path(old["_folder"]))
    return {**record, "_replaced": [r["id"] for r in replaced]}


def _record(name, final, chosen, grid, features, folds, seed, fold_metrics, matrix, test_result, flip) -> dict:
    """``flip``: the flip mode applied (recorded in the part of each cache with flip features)."""
    provenance = features.cache.provenance
    parts = [_feature_part(found, flip) for found in features.caches]
    tuned = "".join(f" {k}={v:.3g}" if isinstance(v, float) else f" {k}={v}" for k, v in (chosen or {}).items())
    return records.build_record(
        kind="head", name=name,
        approach=f"{name}{tuned} on {' + '.join(records.backbone_label(p['backbone']) for p in parts)}"
                 f"{flips.label(parts)}",
        params={k: v for k, v in flips.unwrapped(final).get_params(deep=False).items() if _is_plain(v)},
        dataset=records.dataset_entry(provenance["dataset"]["name"], provenance["dataset"]["fingerprint"],
                                      features.label_set, features.class_names, len(features.y_train),
                                      None if features.y_test is None else len(features.y_test),
                                      np.bincount(features.y_train, minlength=len(features.class_names)).tolist()),
        features=parts[0] if len(parts) == 1 else {"parts": parts},
        cv={"folds": folds, "seed": seed, "grid": grid or None, "fold_metrics": fold_metrics,
            "summary": summarize(fold_metrics), "confusion_matrix": matrix},
        test=test_result,
    )


def _feature_part(found: FeatureCache, flip: str) -> dict:
    """What a record keeps of one cache its head was fitted on: enough to rebuild its feature pipeline, with the
    cache's tta and the ``flip`` mode applied to its flip features (None: it has none)."""
    provenance = found.provenance
    return {"backbone": provenance["backbone"], "weights_sha256": provenance["weights_sha256"],
            "preprocessing": provenance["preprocessing"], "dtype": provenance["dtype"],
            "compute": provenance.get("compute"), "cache_key": provenance["key"], "cache_file": str(found.path),
            "tta": found.tta, "flip": flip if found.flip else None}


def _is_plain(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str, list, tuple, dict))
