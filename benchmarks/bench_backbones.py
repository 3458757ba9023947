"""Backbone throughput: images/s and feature width of one small member of each family at 224 px.

Random weights (nothing is downloaded), one family member each: the keras.applications families and
a DINOv2 ViT-S/14 built from its published configuration and saved as a local KerasHub preset
(needs the hub extra). Each model is featcache's own image-to-feature model
(:func:`featcache.images.feature_model`: resize, preprocessing, backbone), fed uint8 224x224 batches
already in memory; after one warm-up batch, batches run for ``--seconds`` and the rate is
images / time. The machine's load average before and after each model is recorded beside it.

    .venv/bin/python benchmarks/bench_backbones.py [--batch 32] [--seconds 8]
"""

import argparse
import os
import tempfile
import time

import numpy as np

from _common import table, write_results

FAMILIES = ["mobilenet", "mobilenetv2", "mobilenetv3small", "nasnetmobile", "efficientnetb0", "efficientnetv2b0",
            "densenet121", "resnet50", "resnet50v2", "inceptionv3", "xception", "inceptionresnetv2", "convnexttiny",
            "vgg16"]


def dinov2_small_preset(folder) -> str:
    """DINOv2 ViT-S/14 (dinov2_small's architecture), random weights, saved as a KerasHub preset folder."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    keras_hub.models.DINOV2Backbone(patch_size=14, num_layers=12, hidden_dim=384, num_heads=6, intermediate_dim=1536,
                                    image_shape=(224, 224, 3), position_embedding_shape=(518, 518, 3)
                                    ).save_to_preset(folder)
    keras_hub.layers.DINOV2ImageConverter(image_size=(224, 224), scale=list(1 / (255 * np.array([0.229, 0.224, 0.225]))),
                                          offset=list(-np.array([0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225])
                                          ).save_to_preset(folder)
    return f"hub:{folder}"


def measure(name: str, batch: int, seconds: float) -> dict:
    from featcache.backbones import make_spec
    from featcache.images import feature_model

    load_before = os.getloadavg()[0]
    spec = make_spec(name, 224, weights="none")
    started = time.perf_counter()
    model = feature_model(spec)
    images = np.random.default_rng(0).integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8).astype(np.float32)
    width = model.predict_on_batch(images).shape[-1]
    built = time.perf_counter() - started
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        model.predict_on_batch(images)
        count += batch
    rate = count / (time.perf_counter() - started)
    row = {"backbone": spec.name, "width": int(width), "images_per_second": round(rate, 1),
           "build_and_first_batch_s": round(built, 1), "load_before": round(load_before, 2),
           "load_after": round(os.getloadavg()[0], 2)}
    print(row, flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        names = FAMILIES + [dinov2_small_preset(os.path.join(folder, "dinov2_small_random"))]
        rows = [measure(name, args.batch, args.seconds) for name in names]
    body = ("One small member of each family, random weights, 224 px, batches of "
            f"{args.batch} uint8 images in memory through featcache's image-to-feature model, "
            f"{args.seconds:g} s of batches after a warm-up batch. Load average (1 min) before and after each.\n\n")
    body += table(["backbone", "feature width", "images/s", "build + first batch s", "load before", "load after"],
                  [[r["backbone"], r["width"], r["images_per_second"], r["build_and_first_batch_s"],
                    r["load_before"], r["load_after"]] for r in rows])
    write_results("backbones", "Backbone throughput at 224 px (random weights)",
                  f"python benchmarks/bench_backbones.py --batch {args.batch} --seconds {args.seconds:g}", body,
                  {"rows": rows, "batch": args.batch, "seconds": args.seconds})


if __name__ == "__main__":
    main()
