"""The whole pipeline on real data: extract (or reuse) features, every head in k-fold CV plus the test split, report.

Default: the full CIFAR-10 JPEGs (data/cifar10, unpacked from ../shared/data) with ImageNet
MobileNetV2 alpha 0.35 at 224 px (weights from ../shared/data through KERAS_HOME). The report
(Markdown + HTML) goes to benchmarks/results/<name>/ and its main table to <name>.md.

    .venv/bin/python benchmarks/bench_pipeline.py

The reference write-up's CIFAR-100 layout (fine and coarse labels, ResNet50 at 224 px), given a
`cifar-100-python` copy and Keras' ResNet50 weights in $KERAS_HOME/models:

    .venv/bin/python benchmarks/bench_pipeline.py --dataset cifar100 --data-dir PATH/cifar-100-python \\
        --backbone resnet50 --alpha none --name cifar100_resnet50
"""

import argparse
import os
import time

from _common import RESULTS, ROOT, offline_weights, skip_unless, write_results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=f"folder:{ROOT / 'data' / 'cifar10'}")
    parser.add_argument("--data-dir")
    parser.add_argument("--backbone", default="mobilenetv2")
    parser.add_argument("--alpha", default="0.35", help="MobileNet width multiplier, or none")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--heads", default="all")
    parser.add_argument("--folds", type=int, default=6)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--name", default="cifar10_mobilenetv2")
    args = parser.parse_args()
    if args.dataset.startswith("folder:"):
        skip_unless(args.dataset.split(":", 1)[1])
    if args.backbone == "mobilenetv2" and args.alpha == "0.35":
        offline_weights()
    os.environ.setdefault("FEATCACHE_CACHE", str(ROOT / "cache"))

    from featcache import heads
    from featcache.backbones import make_spec
    from featcache.cache import FeatureCache
    from featcache.cv import fit_heads, load_features
    from featcache.datasets import load_dataset
    from featcache.extract import extract
    from featcache.report import build_report

    options = None if args.alpha == "none" else {"alpha": float(args.alpha)}
    dataset = load_dataset(args.dataset, args.data_dir)
    extracted = extract(dataset, make_spec(args.backbone, args.input_size, "avg", "imagenet", options))
    cache = FeatureCache(extracted.path)
    names = heads.available_heads() if args.heads == "all" else args.heads.split(",")
    started = time.perf_counter()
    saved = []
    for label_set in cache.label_sets:
        estimators = {name: heads.make_head(name) for name in names}
        saved += fit_heads(estimators, load_features(cache, label_set), folds=args.folds, test=True, jobs=args.jobs)
    minutes = (time.perf_counter() - started) / 60
    report = build_report(saved, RESULTS / args.name, title=f"{args.dataset.split('/')[-1]}: every head on "
                                                            f"{args.backbone} features")
    body = (f"Features: `{extracted.path.name}` ({', '.join(f'{s} {n:,}' for s, n in cache.rows.items())} rows, "
            f"{cache.width} wide). Heads with their defaults, {args.folds}-fold CV (fold seed 0) plus the test "
            f"split, `--jobs {args.jobs}`: {minutes:.1f} minutes in all.\n\n"
            f"Full report: [{args.name}/report.md]({args.name}/report.md) (HTML: "
            f"[{args.name}/report.html]({args.name}/report.html)).\n\n```\n{report.text}\n```\n")
    command = "python benchmarks/bench_pipeline.py" + ("" if args.name == parser.get_default("name")
                                                        else f" --name {args.name} ...")
    write_results(args.name, f"The whole pipeline: {args.dataset.split('/')[-1]}, {args.backbone}", command, body,
                  {"records": [r["id"] for r in saved], "minutes": minutes,
                   "table": {r["approach"]: {"cv": r["cv"]["summary"]["accuracy"],
                                             "test": (r.get("test") or {}).get("accuracy")} for r in saved}})
    print(body)


if __name__ == "__main__":
    main()
