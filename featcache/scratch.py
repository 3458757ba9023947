"""Training a network from random weights at the dataset's native resolution (the ``featcache scratch`` stage).

Two architectures:

    basic-cnn   two blocks of two 3x3 convolutions with max-pooling and dropout, then Dense 512 and
                softmax (the Keras CIFAR-10 example's network); Adam.
    wrn         Wide ResNet WRN-depth-width (Zagoruyko & Komodakis 2016) with its published recipe:
                pre-activation blocks, SGD with Nesterov momentum 0.9, learning rate 0.1 divided by 5
                at 30%, 60% and 80% of the epochs (60, 120 and 160 of the paper's 200), weight decay
                5e-4, batch 128, flip-and-crop augmentation (4-pixel shifts), optional dropout.

Both standardise each channel with the mean and variance of the training images (a Normalization
layer inside the model, so the saved model takes raw 0-255 pixels).
"""

from dataclasses import asdict

from featcache.backend import keras
import numpy as np

from featcache.datasets import Dataset
from featcache.params import Interval, check
from featcache.settings import ScratchSettings, TrainOptions
from featcache.training import (Phase, augmentation, compile_model, native_size, precision_policy,
                                train_and_evaluate)

STATISTICS_SAMPLE = 2000  # training images the channel mean and variance are computed from
DENSE_DROPOUT = 0.5  # basic-cnn, after Dense 512 (as in the Keras example)
WRN_LR_STEPS = (0.3, 0.6, 0.8)  # fractions of the epochs where the WRN learning rate drops
WRN_LR_FACTOR = 0.2


def basic_cnn(x, n_classes: int, settings: ScratchSettings):
    for filters in (32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.Conv2D(filters, 3, activation="relu")(x)
        x = keras.layers.MaxPooling2D(2)(x)
        x = keras.layers.Dropout(settings.dropout)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(512, activation="relu")(x)
    x = keras.layers.Dropout(DENSE_DROPOUT)(x)
    return keras.layers.Dense(n_classes, activation="softmax", dtype="float32")(x)


def wide_resnet(x, n_classes: int, settings: ScratchSettings):
    """WRN-d-k: a 3x3 convolution, three groups of (d-4)/6 pre-activation blocks of 16k, 32k and 64k
    channels (the last two starting with stride 2), BN-ReLU, global average pooling, softmax."""
    # The paper's weight decay wd adds wd*w to each gradient, as an L2 penalty (wd/2)*|w|^2 does.
    regularizer = keras.regularizers.L2(settings.weight_decay / 2)

    def conv(filters, kernel, stride=1):
        return keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                                   kernel_initializer="he_normal", kernel_regularizer=regularizer)

    def bn_relu(y):
        return keras.layers.ReLU()(keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(y))

    def block(y, filters, stride):
        activated = bn_relu(y)
        same_shape = stride == 1 and y.shape[-1] == filters
        shortcut = y if same_shape else conv(filters, 1, stride)(activated)
        y = bn_relu(conv(filters, 3, stride)(activated))
        if settings.dropout:
            y = keras.layers.Dropout(settings.dropout)(y)
        return keras.layers.Add()([shortcut, conv(filters, 3)(y)])

    x = conv(16, 3)(x)
    for group, filters in enumerate((16, 32, 64)):
        for index in range((settings.depth - 4) // 6):
            x = block(x, filters * settings.width, 2 if group and not index else 1)
    x = keras.layers.GlobalAveragePooling2D()(bn_relu(x))
    return keras.layers.Dense(n_classes, activation="softmax", kernel_regularizer=regularizer, dtype="float32")(x)


ARCHITECTURES = {"basic-cnn": basic_cnn, "wrn": wide_resnet}
MIN_SIZE = {"basic-cnn": 10, "wrn": 4}  # pixels: basic-cnn's unpadded convolutions and poolings shrink 10 to 1


def channel_statistics(images, rows: np.ndarray, seed: int = 0):
    """Per-channel mean and variance (0-255 pixels) of up to STATISTICS_SAMPLE of ``rows``, at their native size."""
    sample = np.random.default_rng(seed).permutation(rows)[:STATISTICS_SAMPLE]
    pixels = np.concatenate([images.read_one(i).reshape(-1, 3) for i in sample])
    return pixels.mean(axis=0), pixels.var(axis=0)


class ScratchRecipe:
    """A network from random weights, trained in one phase."""

    kind = "scratch"

    def __init__(self, settings: ScratchSettings, input_size: int):
        settings.check()
        check("input_size", input_size, [Interval(int, MIN_SIZE[settings.model], None)], owner=settings.model)
        self.config = settings
        self.name = f"wrn-{settings.depth}-{settings.width}" if settings.model == "wrn" else settings.model
        self.input_size = input_size
        self.batch_size = settings.batch_size
        self.settings = {key: value for key, value in asdict(settings).items()
                         if key not in ("batch_size", "input_size")
                         and (settings.model == "wrn" or key not in ("depth", "width", "weight_decay"))}
        self.approach = f"scratch {self.name}-{input_size}"
        self.provenance = {"backbone": None, "architecture": self.name, "weights_sha256": None,
                           "input_size": input_size, "preprocessing": "per-channel standardisation (training images)"}

    def build(self, x, n_classes: int, images, rows):
        mean, variance = channel_statistics(images, rows)
        with precision_policy():
            x = keras.layers.Normalization(mean=mean, variance=variance)(x)
            return ARCHITECTURES[self.config.model](x, n_classes, self.config)

    def phases(self) -> list[Phase]:
        config = self.config

        def start(model, steps):
            if config.model == "wrn":
                total = config.epochs * steps
                boundaries = [int(fraction * total) for fraction in WRN_LR_STEPS]
                values = [config.learning_rate * WRN_LR_FACTOR ** i for i in range(len(boundaries) + 1)]
                schedule = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
                optimizer = keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True)
            else:
                optimizer = keras.optimizers.Adam(config.learning_rate)
            compile_model(model, optimizer)

        return [Phase("train", config.epochs, start)]

    def input_layers(self) -> list:
        if not self.config.augment:
            return []
        if self.config.model == "wrn":  # flip and crop: 4-pixel shifts with zero padding
            return augmentation(flip=True, shift=4 / self.input_size, fill_mode="constant")
        return augmentation(flip=True, shift=0.1)


def scratch(dataset: Dataset, settings: ScratchSettings = ScratchSettings(), label_set: str | None = None,
            options: TrainOptions = TrainOptions(), root=None, resume: bool = False, progress: bool = True,
            callbacks=()) -> dict:
    """Train ``settings.model`` from scratch on ``dataset``; return the saved result record."""
    images = dataset.splits[dataset.train_split].images
    recipe = ScratchRecipe(settings, settings.input_size or native_size(images))
    return train_and_evaluate(recipe, dataset, label_set, options, root, resume, progress, callbacks)
