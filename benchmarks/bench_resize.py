"""Resize policy on photos of mixed aspect ratios: stretch vs centre crop (issue 16).

The dogs-vs-cats photos of ../shared/data (802 images, varied sizes) through ImageNet MobileNetV2
(alpha 0.35) at 224 px, once per policy, then logistic regression (the default head) in 5-fold CV with
the same folds: accuracy for each policy, side by side.

    .venv/bin/python benchmarks/bench_resize.py
"""

import tarfile
import tempfile
import time

import numpy as np

from _common import SHARED_DATA, offline_weights, skip_unless, table, write_results

ARCHIVE = SHARED_DATA / "dogs-vs-cats.tar.gz"


def main():
    skip_unless(ARCHIVE)
    weights = offline_weights()
    from featcache import cv, heads
    from featcache.backbones import make_spec
    from featcache.cache import FeatureCache
    from featcache.datasets import load_dataset
    from featcache.extract import extract

    rows, data = [], {}
    with tempfile.TemporaryDirectory(prefix="featcache-resize-") as work:
        with tarfile.open(ARCHIVE) as archive:
            archive.extractall(work, filter="data")
        dataset = load_dataset(f"folder:{work}/dogs-vs-cats")
        for policy in ("stretch", "crop"):
            spec = make_spec("mobilenetv2", 224, weights=str(weights), options={"alpha": 0.35}, resize=policy)
            started = time.perf_counter()
            found = FeatureCache(extract(dataset, spec, f"{work}/cache", progress=False).path)
            seconds = time.perf_counter() - started
            features = cv.load_features(found)
            saved = cv.fit_heads({"logreg": heads.make_head("logreg")}, features, folds=5, root=f"{work}/cache",
                                 progress=False)[0]
            accuracy = saved["cv"]["summary"]["accuracy"]
            data[policy] = {"cv_accuracy": accuracy, "extract_s": round(seconds, 1)}
            rows.append((policy, f"{accuracy['mean'] * 100:.2f} ± {accuracy['std'] * 100:.2f}", f"{seconds:.0f}"))
            print(rows[-1], flush=True)
    body = ("802 dogs-vs-cats photos (varied sizes and aspect ratios), ImageNet MobileNetV2 0.35 at 224 px, "
            "logreg (defaults) in 5-fold CV, fold seed 0.\n\n"
            + table(["resize", "CV accuracy %", "extract s"], rows) + "\n")
    write_results("resize_policy", "Resize policy on photos: stretch vs centre crop",
                  ".venv/bin/python benchmarks/bench_resize.py", body, data)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
