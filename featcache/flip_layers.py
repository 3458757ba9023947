"""The two Keras layers of flip test-time augmentation (``tta``), registered so saved models load them.

:func:`featcache.images.feature_model` puts :class:`WithMirrored` before the backbone, so one forward pass
runs each image and its mirror image as one batch of twice the rows, and :class:`FlipViews` after it, which
turns the doubled rows back into one row per image. Both are plain tensor operations (``keras.ops``), so
they run under every Keras backend; a ``.keras`` file holding them loads wherever featcache is imported.
"""

from featcache.backend import keras


@keras.saving.register_keras_serializable(package="featcache")
class WithMirrored(keras.layers.Layer):
    """A batch of images (n, h, w, c), then the same images mirrored left to right: 2n rows."""

    def call(self, images):
        return keras.ops.concatenate([images, keras.ops.flip(images, axis=2)], axis=0)

    def compute_output_shape(self, shape):
        return (None if shape[0] is None else 2 * shape[0], *shape[1:])


@keras.saving.register_keras_serializable(package="featcache")
class FlipViews(keras.layers.Layer):
    """Features of a :class:`WithMirrored` batch (2n, d) as one row per image: plain then mirrored (n, 2d), or
    with ``mean`` their mean (n, d)."""

    def __init__(self, mean: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.mean = mean

    def call(self, features):
        plain, mirrored = keras.ops.split(features, 2, axis=0)
        return (plain + mirrored) * 0.5 if self.mean else keras.ops.concatenate([plain, mirrored], axis=-1)

    def compute_output_shape(self, shape):
        rows = None if shape[0] is None else shape[0] // 2
        return (rows, shape[-1] if self.mean else 2 * shape[-1])

    def get_config(self):
        return {**super().get_config(), "mean": self.mean}
