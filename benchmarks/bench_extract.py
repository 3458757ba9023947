"""Extraction throughput: the real extract() path against the bare model and the write-up's per-image loop.

Variants, all on 32x32 uint8 images resized to the backbone's input size, same batch size, timed
side by side in rounds (the order rotates each round, the median round counts):

    bare       the model alone (a tf.function, as in extract) called on one constant preprocessed
               batch already in memory: the ceiling; its first call (the trace) is timed apart
    extract    featcache.extract() on an ArrayImages dataset (tf.data pipeline + model + chunk
               writes), its own ExtractResult.images_per_second (the one-time trace included)
    reference  the reference write-up: a Python loop resizing one image at a time with
               tf.image.resize into a list, then model.predict(batch_size=16) (timed on fewer images)

--profile adds stages of extract() to see where time goes: its tf.data pipeline alone (no model),
pipeline + model without chunk writes, and "fused" (uint8 batches straight into one tf.function
that casts, resizes, preprocesses and runs the model: no tf.data map stage).

    .venv/bin/python benchmarks/bench_extract.py [--rounds 3] [--scale 1.0] [--profile]
"""

import argparse
import statistics
import tempfile
import time

import numpy as np

from _common import array_dataset, cifar_like, table, write_results

BATCH = 64
# backbone, input size, options, images per variant (the reference loop gets half)
CONFIGS = [("mobilenetv2", 224, {"alpha": 0.35}, 2048), ("resnet50", 64, {}, 1024)]


def _forward(model, size):
    import tensorflow as tf

    signature = [tf.TensorSpec((None, size, size, 3), tf.float32)]
    return tf.function(lambda x: model(x, training=False), input_signature=signature)


def _preprocessed(images, spec):
    import tensorflow as tf

    resized = tf.image.resize(tf.cast(images, tf.float32), (spec.input_size, spec.input_size), method="bilinear")
    return spec.backbone.preprocess_input()(resized)


def bare(images, spec):
    from featcache.backbones import build_feature_model

    forward = _forward(build_feature_model(spec), spec.input_size)
    batch = _preprocessed(images[:BATCH], spec)
    started = time.perf_counter()
    forward(batch).numpy()
    first_call = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(len(images) // BATCH):
        forward(batch).numpy()
    seconds = time.perf_counter() - started
    return {"rate": len(images) // BATCH * BATCH / seconds, "trace_s": first_call - seconds / (len(images) // BATCH)}


def extract(images, spec):
    from featcache.extract import extract as run_extract

    with tempfile.TemporaryDirectory(prefix="featcache-bench-") as root:
        result = run_extract(array_dataset(images), spec, root, batch_size=BATCH, force=True, progress=False)
    return {"rate": result.images_per_second}


def reference(images, spec):
    import tensorflow as tf

    from featcache.backbones import build_feature_model

    model = build_feature_model(spec)
    images = images[: len(images) // 2]
    started = time.perf_counter()
    resized = [tf.image.resize(image, (spec.input_size, spec.input_size)).numpy() for image in images]
    model.predict(spec.backbone.preprocess_input()(np.stack(resized)), batch_size=16, verbose=0)
    return {"rate": len(images) / (time.perf_counter() - started)}


def pipeline_only(images, spec):
    from featcache.datasets import ArrayImages
    from featcache.extract import batch_pipeline

    started = time.perf_counter()
    for _ in batch_pipeline(ArrayImages(images), 0, len(images), BATCH, spec):
        pass
    return {"rate": len(images) / (time.perf_counter() - started)}


def pipeline_model(images, spec):
    from featcache.backbones import build_feature_model
    from featcache.datasets import ArrayImages
    from featcache.extract import batch_pipeline

    forward = _forward(build_feature_model(spec), spec.input_size)
    started = time.perf_counter()
    for batch in batch_pipeline(ArrayImages(images), 0, len(images), BATCH, spec):
        forward(batch).numpy()
    return {"rate": len(images) / (time.perf_counter() - started)}


def fused(images, spec):
    import tensorflow as tf

    from featcache.backbones import build_feature_model

    model = build_feature_model(spec)
    signature = [tf.TensorSpec((None, None, None, 3), tf.uint8)]
    forward = tf.function(lambda batch: model(_preprocessed(batch, spec), training=False), input_signature=signature)
    started = time.perf_counter()
    for start in range(0, len(images), BATCH):
        forward(images[start:start + BATCH]).numpy()
    return {"rate": len(images) / (time.perf_counter() - started)}


def measure(spec, images, variants, rounds):
    """Every variant once per round, the order rotating; returns variant -> list of per-round results."""
    runs = {name: [] for name in variants}
    for r in range(rounds):
        order = list(variants)[r % len(variants):] + list(variants)[:r % len(variants)]
        for name in order:
            runs[name].append(variants[name](images, spec))
            print(f"  round {r + 1} {name}: {runs[name][-1]['rate']:.1f} images/s", flush=True)
    return runs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the images per variant")
    parser.add_argument("--profile", action="store_true", help="also time the stages of extract()")
    args = parser.parse_args()
    from featcache.backbones import make_spec

    variants = {"bare": bare, "extract": extract, "reference": reference}
    if args.profile:
        variants.update({"pipeline only": pipeline_only, "pipeline + model": pipeline_model, "fused": fused})
    rows, data = [], {"batch_size": BATCH, "rounds": args.rounds, "configs": []}
    for name, size, options, count in CONFIGS:
        spec = make_spec(name, size, "avg", "none", options)
        images = cifar_like(int(count * args.scale) // BATCH * BATCH)
        label = f"{name}{' ' + str(options['alpha']) if options else ''} @ {size}"
        print(f"{label}: {len(images)} images per variant", flush=True)
        runs = measure(spec, images, variants, args.rounds)
        rate = {v: statistics.median(r["rate"] for r in runs[v]) for v in variants}
        trace = statistics.median(r["trace_s"] for r in runs["bare"])
        in_round = statistics.median(e["rate"] / b["rate"] for e, b in zip(runs["extract"], runs["bare"]))
        # extract's rate with the one-time trace (timed in bare) taken out: its steady state
        steady = len(images) / (len(images) / rate["extract"] - trace)
        for v in variants:
            note = {"bare": f"first call (trace) {trace:.1f} s", "reference": f"{len(images) // 2} images",
                    "extract": f"{in_round:.2f}x in-round; {steady / rate['bare']:.2f}x without the trace"}.get(v, "")
            rows.append((label, v, f"{rate[v]:.1f}", f"{rate[v] / rate['bare']:.2f}x",
                         f"{rate['extract'] / rate[v]:.2f}x", note))
        data["configs"].append({"backbone": label, "images": len(images), "runs": runs, "median_rate": rate,
                                "extract_over_bare": rate["extract"] / rate["bare"],
                                "extract_over_bare_in_round": in_round, "trace_s": trace,
                                "extract_steady_over_bare": steady / rate["bare"],
                                "extract_over_reference": rate["extract"] / rate["reference"]})

    headers = ["backbone @ px", "variant", "images/s (median)", "/ bare", "extract / this", "note"]
    verdicts = "\n".join(
        f"- {c['backbone']}: extract / bare = {c['extract_over_bare']:.2f}x (target >= 0.9x: "
        f"**{'met' if c['extract_over_bare'] >= 0.9 else 'NOT met'}**); extract / reference = "
        f"{c['extract_over_reference']:.2f}x" for c in data["configs"])
    body = (f"32x32 random uint8 images, random weights (`weights=\"none\"`: speed does not depend on them), "
            f"avg pooling, batch {BATCH} (reference: predict batch 16), float32 features. {args.rounds} rounds "
            f"per backbone, variants interleaved with the order rotating each round; the median round per "
            f"variant is shown. See the docstring of `benchmarks/bench_extract.py` for what each variant "
            f"times.\n\n{table(headers, rows)}\n\n{verdicts}\n")
    command = "python benchmarks/bench_extract.py" + (" --profile" if args.profile else "") + (
        f" --rounds {args.rounds}" if args.rounds != 3 else "") + (f" --scale {args.scale}" if args.scale != 1 else "")
    write_results("extract_speed", "Extraction throughput", command, body, data)
    print(body)


if __name__ == "__main__":
    main()
