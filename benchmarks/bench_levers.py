"""Accuracy levers on CIFAR-10 (issue 16): the sweep, flip averaging, fusion and all of them, against the baseline.

ImageNet MobileNetV2 (alpha 0.35) features of the whole CIFAR-10 (50,000 train, 10,000 test JPEGs from
``cifar10-jpg.tar.gz``), extracted twice through ``featcache.extract.extract`` with ``tta="flip"``: at
224 px (the baseline's input) and at ``--second`` px (the second input size that fusion adds). Each lever
is one ``featcache.cv.fit_heads`` call of ``logreg`` (``--folds``-fold CV, then the head refitted on all
50,000 training images and scored on the 10,000 test images), exactly as ``featcache fit --test`` runs:

    baseline          224 px, plain features, C=0.01                  (featcache fit --test --flip ignore)
    flip averaging    + the test image and its mirror image averaged  (--flip average)
    flip training     + the mirrors of the training images as rows    (--flip train)
    sweep             + C chosen by the built-in sweep                 (--sweep --flip ignore)
    fusion            + the --second px features beside the 224 px     (--cache A --cache B --flip ignore)
    all               sweep, flip training and averaging, fusion      (--cache A --cache B --sweep --flip train)
    fusion + sweep    fusion with C chosen by the sweep               (--cache A --cache B --sweep --flip ignore)

The baseline also draws its learning curve (``--shots``, ``--repeats`` seeded draws, test accuracy).
The resize policy is measured on the dogs-vs-cats photos (``bench_resize.py``, ``results/resize_policy.md``):
CIFAR-10's images are square and 32 px, where a centre crop only zooms.

Levers run in the order of ``LEVERS`` (all second) and the results are written after each one, so a run stopped by
``--budget`` (seconds; no lever starts after it) keeps what it measured. On a GPU (the device machine,
``KERAS_BACKEND=jax``) the whole run takes a few minutes; on this project's 2-core CPU, hours.

    python benchmarks/bench_levers.py --out DIR [--archive cifar10-jpg.tar.gz] [--weights FILE]
        [--second 288] [--folds 2] [--budget 420] [--per-class N (a subset, for a smoke run)]
"""

import argparse
import json
import os
import platform
import shlex
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import SHARED_DATA, WEIGHTS_FILE, gpu_list, table

HERE = Path(__file__).resolve().parent
LEVERS = [  # name, input sizes fused, flip mode, sweep (all second: a run cut by --budget keeps it)
    ("baseline", (224,), "ignore", False),
    ("all", (224, "second"), "train", True),
    ("sweep", (224,), "ignore", True),
    ("flip averaging", (224,), "average", False),
    ("fusion", (224, "second"), "ignore", False),
    ("flip training", (224,), "train", False),
    ("fusion + sweep", (224, "second"), "ignore", True),
]


def first_existing(*paths) -> Path:
    return next((Path(p) for p in paths if Path(p).exists()), Path(paths[0]))


def subset(folder: Path, per_class: int) -> None:
    """Keep the first ``per_class`` images of every class folder of every split (a smoke run)."""
    for class_dir in folder.glob("*/*"):
        for extra in sorted(class_dir.glob("*.jpg"))[per_class:]:
            extra.unlink()


def device() -> str:
    return f"{gpu_list() or 'no GPU'}; {os.cpu_count()} CPU cores; Python {platform.python_version()}"


def lever_row(name: str, record: dict, baseline: float | None, seconds: float) -> tuple:
    test, cv = record["test"]["accuracy"], record["cv"]["summary"]["accuracy"]
    chosen = f"C={record['params']['C']:.3g}"
    gain = "" if baseline is None else f"{(test - baseline) * 100:+.2f}"
    return (name, f"{test * 100:.2f}", gain, f"{cv['mean'] * 100:.2f} ± {cv['std'] * 100:.2f}",
            f"{record['test']['balanced_accuracy'] * 100:.2f}", chosen, f"{seconds:.0f}")


def curve_rows(curve: dict) -> list:
    return [(p["shots"], f"{np.mean(p['accuracies']) * 100:.2f}", f"{np.std(p['accuracies']) * 100:.2f}",
             len(p["accuracies"])) for p in curve["points"]]


def write(out: Path, data: dict) -> None:
    lines = [f"# Accuracy levers on CIFAR-10: ImageNet MobileNetV2 0.35 features, logreg\n",
             f"- date: {data['date']}", f"- machine: {data['device']}",
             f"- backend: Keras {data['keras']} on {data['backend']}, precision float32, XLA {data['xla']}",
             f"- command: `{data['command']}`",
             f"- images: {data['n_train']:,} train, {data['n_test']:,} test; features extracted "
             "(`--tta flip` unless said) in " +
             ", ".join(f"{s:.0f} s at {view}" for view, s in data["extract_seconds"].items()), ""]
    if data["levers"]:
        lines += [f"Each lever: `fit_heads` of logreg, {data['folds']}-fold CV (fold seed 0) and the test split; "
                  "gain: test accuracy points over the baseline.\n",
                  table(["lever", "test accuracy %", "gain", f"{data['folds']}-fold CV %", "test balanced %",
                         "C", "fit s"], [tuple(r) for r in data["levers"]]), ""]
    if data.get("curve"):
        lines += ["## Learning curve (the baseline: 224 px, plain features, C=0.01)\n",
                  f"Test accuracy against training images per class, {data['curve']['repeats']} seeded draws "
                  "(nested across counts; all is one fit: the same rows in every draw).\n",
                  table(["images per class", "test accuracy %", "std", "draws"], curve_rows(data["curve"])), ""]
    if data.get("stopped"):
        lines.append(f"Not run (the --budget of {data['budget']:.0f} s was spent): {', '.join(data['stopped'])}.\n")
    (out / "levers.md").write_text("\n".join(lines))
    (out / "levers.json").write_text(json.dumps(data, indent=2, default=str) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--archive", default=str(first_existing(HERE / "gpu-data" / "cifar10-jpg.tar.gz",
                                                                SHARED_DATA / "cifar10-jpg.tar.gz")))
    parser.add_argument("--weights", default=str(first_existing(HERE / "gpu-data" / "keras" / "models" / WEIGHTS_FILE,
                                                                SHARED_DATA / "keras" / "models" / WEIGHTS_FILE)))
    parser.add_argument("--second", type=int, default=288, help="the input size fused with 224 (the weights file "
                        "is the 224 one: Keras uses it for any size outside 96-224's five)")
    parser.add_argument("--second-tta", default="flip", choices=("flip", "none"),
                        help="none: the second size without flips (enough for the fusion lever alone)")
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--shots", default="1,2,5,10,25,100,500,1000,all")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=float, default=420)
    parser.add_argument("--levers", default=",".join(name for name, *_ in LEVERS),
                        help="comma list of the levers to run (the baseline always runs)")
    parser.add_argument("--cache-dir", help="keep the features here (default: a temporary folder)")
    parser.add_argument("--per-class", type=int, help="keep this many images per class and split (smoke run)")
    parser.add_argument("--random-weights", action="store_true", help="no weights file (smoke run)")
    args = parser.parse_args()
    begun = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from featcache import cv, heads
    from featcache.backbones import make_spec
    from featcache.backend import keras
    from featcache.cache import FeatureCache
    from featcache.compute import resolve
    from featcache.datasets import load_dataset
    from featcache.extract import extract

    work = Path(tempfile.mkdtemp(prefix="featcache-levers-"))
    cache_root = Path(args.cache_dir) if args.cache_dir else work / "cache"
    chosen = [lever for lever in LEVERS if lever[0] == "baseline" or lever[0] in args.levers.split(",")]
    with tarfile.open(args.archive) as archive:
        archive.extractall(work / "cifar10", filter="data")
    folder = next(p.parent for p in (work / "cifar10").rglob("train"))
    if args.per_class:
        subset(folder, args.per_class)
    dataset = load_dataset(f"folder:{folder}")
    compute = resolve("float32", None)
    sizes = {key: size for key, size in {224: 224, "second": args.second}.items()
             if any(key in views for _, views, _, _ in chosen)}
    caches, extract_seconds = {}, {}
    for key, size in sizes.items():
        spec = make_spec("mobilenetv2", size, weights="none" if args.random_weights else args.weights,
                         options={"alpha": 0.35})
        started = time.perf_counter()
        tta = "flip" if key == 224 else args.second_tta
        result = extract(dataset, spec, cache_root, tta=tta, precision="float32", xla=compute.xla, progress=False)
        view = f"{size} px" + ("" if tta == "flip" else " (no flips)")
        caches[key], extract_seconds[view] = FeatureCache(result.path), time.perf_counter() - started
        print(f"extracted {view} in {extract_seconds[view]:.0f} s", flush=True)

    data = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": device(), "keras": keras.__version__,
            "backend": keras.backend.backend(), "xla": "on" if compute.xla else "off",
            "command": "python benchmarks/bench_levers.py " + shlex.join(sys.argv[1:]), "second": args.second,
            "n_train": caches[224].rows["train"], "n_test": caches[224].rows["test"], "folds": args.folds,
            "budget": args.budget, "extract_seconds": extract_seconds, "levers": [], "records": {}, "stopped": []}
    write(out, data)
    baseline = None
    for name, views, flip, sweep in chosen:
        if time.perf_counter() - begun > args.budget:
            data["stopped"].append(name)
            continue
        features = cv.load_features([caches[v] for v in views], flip=flip != "ignore")
        started = time.perf_counter()
        record = cv.fit_heads({"logreg": heads.make_head("logreg")}, features, folds=args.folds, test=True,
                              root=cache_root, progress=False, sweep=sweep, flip=flip,
                              shots=[k if k == "all" else int(k) for k in args.shots.split(",")]
                              if name == "baseline" and args.shots != "none" else None,
                              repeats=args.repeats)[0]
        seconds = time.perf_counter() - started
        baseline = record["test"]["accuracy"] if baseline is None else baseline
        data["levers"].append(lever_row(name, record, None if name == "baseline" else baseline, seconds))
        data["records"][name] = {k: record.get(k) for k in ("approach", "params", "test", "cv", "features")}
        if record.get("shots"):
            data["curve"] = record["shots"]
        print(" | ".join(data["levers"][-1]), flush=True)
        write(out, data)
    write(out, data)  # with the levers --budget left out
    print((out / "levers.md").read_text())


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
