"""Training speed and accuracy: seconds per epoch of fine-tuning and of training from scratch, and the
test accuracy after a fixed small number of epochs, on the CIFAR-10 JPEG folders.

- finetune: mobilenetv2 alpha 0.35, ImageNet weights (loaded by path), at --input-size (default 64),
  phase 1 (head on the frozen backbone) then phase 2 (top block unfrozen), --epochs each;
- scratch: basic-cnn at the native 32 px, --epochs; and optionally a small Wide ResNet (--wrn, e.g. 10-2).

On 2 CPU cores a full CIFAR-10 epoch of each stage takes minutes, so --train-per-class and
--test-per-class take a stratified subset (the first N files of each class, in sorted order);
0 means the whole split. Epoch times are wall-clock times of model.fit epochs (data pipeline included).

    KERAS_HOME=/tmp/kh nice -n 10 .venv/bin/python benchmarks/bench_training.py \\
        [--data data/cifar10] [--train-per-class 500] [--test-per-class 200] [--epochs 1] [--wrn 10-2]
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import ROOT, WEIGHTS_FILE, skip_unless, table, write_results
from featcache.backbones import keras_home, make_spec
from featcache.datasets import Dataset, Split, open_images
from featcache.finetune import finetune
from featcache.scratch import scratch
from featcache.settings import FinetuneSettings, TrainOptions, scratch_settings


def cifar_subset(folder: Path, train_per_class: int, test_per_class: int) -> Dataset:
    """The first N images of each class of train/ and test/ (all with 0), as a featcache Dataset."""
    classes = sorted(p.name for p in (folder / "train").iterdir() if p.is_dir())
    splits = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        files, labels = [], []
        for label, name in enumerate(classes):
            chosen = sorted((folder / split / name).glob("*.jpg"))
            chosen = chosen[:per_class] if per_class else chosen
            files += chosen
            labels += [label] * len(chosen)
        images, kept, _ = open_images(files)
        splits[split] = Split(images, {"label": np.array(labels, dtype=np.int64)[kept]})
    return Dataset(f"folder:cifar10-{train_per_class or 'all'}-{test_per_class or 'all'}", splits, {"label": classes})


def epoch_timer():
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(round(time.perf_counter() - self.started, 2))

    return EpochTimer()


def measure(name: str, train, data: Dataset) -> dict:
    timer = epoch_timer()
    started = time.perf_counter()
    record = train(data, timer)
    total = time.perf_counter() - started
    history = record["history"]
    print(f"{name}: epochs {timer.seconds} s, test accuracy {record['test']['accuracy']:.4f}, total {total:.0f} s")
    return {"stage": name, "epoch_seconds": timer.seconds, "phases": {k: len(v) for k, v in history.items()},
            "train_images": record["dataset"]["n_train"], "test_images": record["dataset"]["n_test"],
            "images_per_second": [round(record["dataset"]["n_train"] * 0.9 / s, 1) for s in timer.seconds],
            "test_accuracy": record["test"]["accuracy"], "total_seconds": round(total, 1),
            "last_train_loss": [phase[-1]["loss"] for phase in history.values()], "record": record["id"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "cifar10")
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--wrn", help="DEPTH-WIDTH of a Wide ResNet to time too, e.g. 10-2")
    args = parser.parse_args()
    weights = keras_home() / "models" / WEIGHTS_FILE
    skip_unless(args.data / "train", args.data / "test", weights)
    data = cifar_subset(args.data, args.train_per_class, args.test_per_class)
    root = tempfile.mkdtemp(prefix="bench-training-")
    options = TrainOptions(val_split=0.1, patience=0)
    spec = make_spec("mobilenetv2", args.input_size, weights=str(weights), options={"alpha": 0.35})
    runs = [
        (f"finetune mobilenetv2-0.35 {args.input_size}px (unfreeze 1)", lambda d, t: finetune(
            d, spec, FinetuneSettings(epochs=args.epochs, finetune_epochs=args.epochs, batch_size=args.batch_size),
            options=options, root=root, progress=False, callbacks=[t])),
        ("scratch basic-cnn 32px", lambda d, t: scratch(
            d, scratch_settings("basic-cnn", epochs=args.epochs, batch_size=args.batch_size), options=options,
            root=root, progress=False, callbacks=[t])),
    ]
    if args.wrn:
        depth, width = map(int, args.wrn.split("-"))
        runs.append((f"scratch wrn-{depth}-{width} 32px", lambda d, t: scratch(
            d, scratch_settings("wrn", depth=depth, width=width, epochs=args.epochs, batch_size=args.batch_size),
            options=options, root=root, progress=False, callbacks=[t])))
    results = [measure(name, train, data) for name, train in runs]

    rows = [[r["stage"], ", ".join(f"{s:.1f}" for s in r["epoch_seconds"]),
             ", ".join(f"{v:.0f}" for v in r["images_per_second"]), f"{r['test_accuracy'] * 100:.2f}",
             f"{r['total_seconds']:.0f}"] for r in results]
    subset = (f"{args.train_per_class} training and {args.test_per_class} test images per class"
              if args.train_per_class else "the full splits")
    body = f"""
Data: CIFAR-10 JPEG folders ({args.data}), a stratified subset: {subset} (10 classes:
{results[0]['train_images']:,} training images, of which 10% are held out for validation, and
{results[0]['test_images']:,} test images). The full 50,000-image epoch was not run: on 2 cores it
would take roughly 10x the subset's epoch time (images/s below stay the same). No GPU was available,
so no GPU measurements were made.

Settings: {args.epochs} epoch(s) per phase, batch {args.batch_size}, no early stopping; fine-tuning phase 1
Adam 1e-3 on the head, phase 2 Adam 1e-5 with the top block unfrozen (BatchNorm frozen), augmentation
on; basic-cnn Adam 1e-3 with flip and shift augmentation. Epoch seconds are wall-clock per model.fit epoch
(the first epoch of each phase includes tracing); images/s counts the 90% of training images fitted.

{table(["Stage", "Seconds per epoch (each phase)", "Images/s", "Test accuracy %", "Total s"], rows)}

Accuracy after so few epochs on a subset is only a smoke signal, not the approaches' reachable accuracy.
"""
    command = ("KERAS_HOME=/tmp/kh nice -n 10 .venv/bin/python benchmarks/bench_training.py "
               f"--train-per-class {args.train_per_class} --test-per-class {args.test_per_class} "
               f"--epochs {args.epochs} --input-size {args.input_size}" + (f" --wrn {args.wrn}" if args.wrn else ""))
    write_results("training", "Training speed and accuracy (finetune and scratch)", command, body,
                  {"settings": vars(args) | {"data": str(args.data)}, "results": results})


if __name__ == "__main__":
    main()
