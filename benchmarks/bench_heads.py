"""What each head costs on 50,000 x 2048 features with 100 classes, and what its defaults trade away.

Part 1 (speed, synthetic): 50,000 x 2048 float32 features of 100 classes (the size of ResNet50
features of CIFAR-100; see ``synthetic`` for their structure). For each head with its defaults: one fold of a 6-fold split
fitted and scored as featcache.cv does it; with --full, the whole 6-fold cross-validation.

Part 2 (trade-off, real): on the cached ImageNet MobileNetV2 0.35 features of CIFAR-10 (run
benchmarks/bench_cifar10.py first), each head with its defaults against a costlier setting,
trained on the 50,000 training images and scored on the 10,000 test images.

    .venv/bin/python benchmarks/bench_heads.py [--full] [--heads logreg,svm] [--skip-real]
"""

import argparse
import time

import numpy as np

from _common import ROOT, table, write_results

# head -> the costlier setting its defaults are compared with on real features
COSTLIER = {
    "logreg": {"max_iter": 1000},
    "svm": {"max_iter": 600},
    "knn": {"n_neighbors": 25},
    "mlp": {"patience": 8, "epochs": 60},
    "xgboost": {"pca": 128, "max_depth": 6},
}
TARGET_CV_MINUTES = {"logreg": 10, "svm": 10, "knn": 10, "mlp": 20}
TARGET_FOLD_MINUTES = {"xgboost": 15}


def synthetic(n=50_000, dim=2048, classes=100, seed=0):
    """ReLU-like features of 100 classes, correlated through a 256-dim latent space with a decaying
    spectrum: ill-conditioned like real pooled features, so iterative solvers work about as hard as on
    them (well separated Gaussian blobs converge in a handful of steps and would flatter them)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    latent = rng.normal(size=(classes, 256)).astype(np.float32)
    mix = (rng.normal(size=(256, dim)) / 2).astype(np.float32)
    spectrum = (1.0 / np.arange(1, 257) ** 0.7).astype(np.float32)
    z = (0.4 * latent[y] + rng.normal(size=(n, 256)).astype(np.float32)) * spectrum
    return np.maximum(z @ mix + 0.3 * rng.normal(size=(n, dim)).astype(np.float32), 0), y


def features_of(x, y):
    from featcache import cv

    fake_cache = type("Cache", (), {"class_names": {"label": [str(c) for c in range(y.max() + 1)]}})()
    return cv.Features(fake_cache, "label", x, y, None, None)


def speed(names, full):
    from featcache import cv, evaluation, heads

    x, y = synthetic()
    features = features_of(x, y)
    folds = evaluation.fold_indices(y, 6, seed=0)
    rows, data = [], {}
    for name in names:
        started = time.perf_counter()
        metrics, _ = cv.cross_validate_head(heads.make_head(name), {}, features, folds if full else folds[:1])
        wall = time.perf_counter() - started
        fold_fit = float(np.mean([m["fit_seconds"] for m in metrics]))
        fold_predict = float(np.mean([m["predict_seconds"] for m in metrics]))
        cv_minutes = wall / 60 if full else wall * 6 / 60
        if name in TARGET_FOLD_MINUTES:
            target, met = f"fold < {TARGET_FOLD_MINUTES[name]} min", (fold_fit + fold_predict) / 60 < TARGET_FOLD_MINUTES[name]
        else:
            target, met = f"6-fold < {TARGET_CV_MINUTES[name]} min", cv_minutes < TARGET_CV_MINUTES[name]
        data[name] = {"fold_fit_s": fold_fit, "fold_predict_s": fold_predict, "cv_minutes": cv_minutes,
                      "measured_folds": len(metrics), "target": target, "met": met}
        rows.append((name, f"{fold_fit:.1f}", f"{fold_predict:.1f}",
                     f"{cv_minutes:.1f}" + ("" if full else " (6 x one fold)"), target, "met" if met else "**NOT met**"))
        print(rows[-1], flush=True)
    headers = ["head", "fit s (one fold)", "predict s (one fold)", "6-fold CV minutes", "target", ""]
    return table(headers, rows), data


def trade_off(names):
    from featcache import heads
    from featcache.cache import FeatureCache, select
    from featcache.cv import load_features

    features = load_features(FeatureCache(select(ROOT / "cache", None, "mobilenetv2", "folder:cifar10")))
    rows, data = [], {}
    for name in names:
        for setting, params in (("defaults", {}), ("costlier", COSTLIER[name])):
            started = time.perf_counter()
            head = heads.make_head(name, **params).fit(features.x_train, features.y_train)
            fit_s = time.perf_counter() - started
            accuracy = float(np.mean(head.predict(features.x_test) == features.y_test))
            data.setdefault(name, {})[setting] = {"params": params, "fit_s": fit_s, "test_accuracy": accuracy}
            shown = ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults"
            rows.append((name, shown, f"{accuracy * 100:.2f}", f"{fit_s:.0f}"))
            print(rows[-1], flush=True)
    return table(["head", "setting", "test accuracy %", "fit s"], rows), data


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="run all 6 folds instead of timing one")
    parser.add_argument("--heads", default="logreg,svm,knn,mlp,xgboost")
    parser.add_argument("--skip-real", action="store_true", help="skip part 2 (real CIFAR-10 features)")
    args = parser.parse_args()
    names = args.heads.split(",")
    speed_table, speed_data = speed(names, args.full)
    body = ("## Speed: 50,000 x 2048 float32, 100 classes, each head's defaults\n\n"
            "Synthetic ReLU-like, correlated features of 100 classes (`synthetic()` in the script); a fold trains on 41,667 rows and scores 8,333, "
            "single process (`--jobs 1`).\n\n" + speed_table + "\n")
    data = {"speed": speed_data}
    if not args.skip_real:
        real_table, real_data = trade_off(names)
        body += ("\n## What the defaults trade away: CIFAR-10, ImageNet MobileNetV2 0.35 features (1280 wide)\n\n"
                 "Trained on the 50,000 training images, scored on the 10,000 test images.\n\n" + real_table + "\n")
        data["trade_off"] = real_data
    command = "python benchmarks/bench_heads.py" + (" --full" if args.full else "") + \
        ("" if args.heads == parser.get_default("heads") else f" --heads {args.heads}") + \
        (" --skip-real" if args.skip_real else "")
    write_results("heads", "What each head costs", command, body, data)
    print(body)


if __name__ == "__main__":
    main()
