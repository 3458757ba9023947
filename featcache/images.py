"""The image pipeline every stage shares: the host decodes and batches, one compiled model does the rest.

Host side (:class:`HostBatches`): rows of an image source are decoded in a pool of threads (Pillow
releases the GIL while it decodes) and stacked into float32 batches, a few batches ahead of the
device. A batch of images of one size is stacked as it is; a batch of mixed sizes is first resized
image by image with :meth:`Framing.resize_one`, the same resize the model applies, so a batch
always has one shape and an image gets the same features in either kind of batch.

Device side (:func:`feature_model`): one Keras model maps a batch to features: cast, bilinear
resize to the backbone's input size, the backbone's preprocessing as a fixed per-pixel affine
layer, the backbone. Extract, predict and export all run this model, and it needs no TensorFlow
ops, so it runs under any Keras backend.
"""

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from featcache.errors import FeatcacheError



def affine_preprocessing(preprocess) -> tuple[np.ndarray, np.ndarray]:
    """A preprocessing function as out = pixel @ kernel + bias, found by probing it.

    Every Keras application's preprocessing (scaling to [-1, 1], caffe's BGR mean subtraction,
    torch's mean/std normalisation, or none) is per-pixel affine, so it becomes one fixed 1x1
    convolution: a plain Keras layer that runs under every backend and needs no custom code to load.
    """
    probes = np.array([[[[0, 0, 0], [100, 0, 0], [0, 100, 0], [0, 0, 100], [17, 211, 90]]]], dtype=np.float32)
    out = np.asarray(preprocess(probes.copy()), dtype=np.float64)[0, 0]
    bias = out[0]
    kernel = (out[1:4] - bias) / 100.0  # row i: the output for a unit of input channel i
    if not np.allclose(probes[0, 0, 4] @ kernel + bias, out[4], atol=1e-3):
        raise FeatcacheError("the backbone's preprocessing is not per-pixel affine: featcache cannot fuse it")
    return kernel.astype(np.float32), bias.astype(np.float32)


@dataclass(frozen=True)
class Framing:
    """How an image becomes the backbone's square input of ``size``: stretched to it, or (``crop``) its
    shorter side scaled to size / CROP_FRACTION and the centre size x size kept, as most pretrained
    backbones were evaluated. The host resizes a batch of mixed sizes with the first layer alone (to
    ``first`` pixels square), which the model's own first layer then leaves as it is."""

    size: int
    crop: bool = False

    @classmethod
    def of(cls, spec) -> "Framing":
        return cls(spec.input_size, spec.resize == "crop")

    @property
    def first(self) -> int:
        from featcache.backbones import CROP_FRACTION

        return round(self.size / CROP_FRACTION) if self.crop else self.size

    def layers(self) -> list:
        from featcache.backend import keras

        resize = keras.layers.Resizing(self.first, self.first, interpolation="bilinear", crop_to_aspect_ratio=self.crop,
                                       name="resize")
        return [resize, keras.layers.CenterCrop(self.size, self.size, name="centre_crop")] if self.crop else [resize]

    def resize_one(self, pixels: np.ndarray) -> np.ndarray:
        """One uint8 image (h, w, 3) as float32 through the model's own first resize layer."""
        from featcache.backend import keras

        if pixels.shape[:2] == (self.first, self.first):
            return pixels.astype(np.float32)
        resized = self.layers()[0](pixels[None].astype(np.float32))
        return np.asarray(keras.ops.convert_to_numpy(resized))[0]


def affine_layer(size: int, preprocess, name: str = "preprocess"):
    """The backbone's preprocessing as a fixed 1x1 convolution (see :func:`affine_preprocessing`)."""
    from featcache.backend import keras

    kernel, bias = affine_preprocessing(preprocess)
    affine = keras.layers.Conv2D(3, 1, name=name, trainable=False)
    affine.build((None, size, size, 3))
    affine.set_weights([kernel.reshape(1, 1, 3, 3), bias])
    return affine


def feature_model(spec, compute=None, input_dtype: str = "float32", tta: str = "none"):
    """Images (any size, ``input_dtype``) -> resize -> preprocessing -> ``spec``'s backbone features, one model,
    built with ``compute``'s precision and compiled with its XLA setting (:mod:`featcache.compute`).

    The resize and preprocessing stay float32 in every precision; the features come out as float32.
    ``tta="flip"``: each image's features, then those of the image mirrored left to right (twice the width);
    ``"flip-mean"``: their mean. The mirror images go through the backbone in the same batch
    (:mod:`featcache.flip_layers`).
    """
    from featcache.backbones import build_feature_model
    from featcache.backend import dtype_policy, keras, mixed_policy

    images = keras.Input((None, None, 3), dtype=input_dtype, name="images")
    x = keras.layers.Rescaling(1.0, name="to_float")(images)  # a cast that every backend saves and loads
    for layer in [*Framing.of(spec).layers(), affine_layer(spec.input_size, spec.backbone.preprocess_input())]:
        x = layer(x)
    if tta != "none":
        from featcache.flip_layers import WithMirrored

        x = WithMirrored(name="with_mirrored")(x)
    mixed = compute is not None and compute.precision == "mixed"
    with dtype_policy(mixed_policy() if mixed else None):
        features = build_feature_model(spec)(x)
    features = keras.layers.Activation("linear", dtype="float32", name="features")(features)
    if tta != "none":
        from featcache.flip_layers import FlipViews

        features = FlipViews(mean=tta == "flip-mean", name="flip_views")(features)
    model = keras.Model(images, features, name=f"{spec.name}_features")
    model.compile(jit_compile=bool(compute and compute.xla))
    return model


def read_batch(images, first: int, last: int, framing: Framing) -> np.ndarray:
    """Rows first..last of an image source as one float32 batch, at their own size when they share one,
    else each resized first (by the model's own first layer, so the features are the same)."""
    if hasattr(images, "read"):  # rows of one array
        return np.asarray(images.read(first, last), dtype=np.float32)
    pixels = [images.read_one(i) for i in range(first, last)]
    if len({p.shape for p in pixels}) == 1:
        return np.stack(pixels).astype(np.float32)
    return np.stack([framing.resize_one(p) for p in pixels])


class HostBatches:
    """float32 batches of rows start..stop of an image source, decoded by ``workers`` threads, one batch each,
    so up to ``workers`` batches are read ahead of the device. Iterate to get them in order; ``len()`` is the
    number of batches.

    Batches of mixed sizes are resized on the host as ``framing`` says (:func:`read_batch`).
    """

    def __init__(self, images, start: int, stop: int, batch_size: int, framing: Framing,
                 workers: int | None = None):
        self.images, self.framing = images, framing
        self.bounds = [(first, min(first + batch_size, stop)) for first in range(start, stop, batch_size)]
        self.workers = workers or min(8, (os.cpu_count() or 1) + 1)

    def __len__(self):
        return len(self.bounds)

    def __iter__(self):
        with ThreadPoolExecutor(self.workers) as pool:
            pending = [pool.submit(read_batch, self.images, *b, self.framing) for b in self.bounds[:self.workers]]
            for index in range(len(self.bounds)):
                batch = pending[index].result()
                following = index + self.workers
                if following < len(self.bounds):
                    pending.append(pool.submit(read_batch, self.images, *self.bounds[following], self.framing))
                pending[index] = None  # let the batch go once it is handed out
                yield batch


def forward(model, batch_size: int):
    """``model`` as a function of one host batch -> float32 numpy features.

    A short last batch is padded to ``batch_size`` (and the padding's rows dropped), so the model
    is compiled for one shape only; each row's features do not depend on the others in inference.
    """
    from featcache.backend import keras

    def run(batch: np.ndarray) -> np.ndarray:
        rows = len(batch)
        if rows < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - rows, *batch.shape[1:]), batch.dtype)])
        out = model.predict_on_batch(batch)
        return np.asarray(keras.ops.convert_to_numpy(out), dtype=np.float32)[:rows]

    return run


CPU_BATCH = 64  # on a CPU a larger batch computes no faster and holds more memory


def largest_batch(model, size: int, limit: int) -> int:
    """The largest power of two up to ``limit`` whose forward pass fits the device (a quick probe on zeros);
    ``CPU_BATCH`` without a GPU. Out-of-memory errors differ by backend, so any failure halves the batch."""
    from featcache.backend import gpu_present

    if not gpu_present():
        return min(CPU_BATCH, limit)
    batch = limit
    while batch > 1:
        try:
            model.predict_on_batch(np.zeros((batch, size, size, 3), np.float32))
            return batch
        except Exception:  # ResourceExhaustedError, XlaRuntimeError, torch.OutOfMemoryError, ...
            batch //= 2
    return 1
