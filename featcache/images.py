"""The image pipeline every stage shares: read uint8 rows lazily, resize, transform, batch.

Extraction, predict and the training stages all feed their models through :func:`image_batches`,
so the same image is resized by the same op wherever it goes (export builds the same resize and
preprocessing into its Keras model).
"""


def image_batches(images, start: int, stop: int, batch_size: int, size: int, transform):
    """A ``tf.data`` pipeline of rows start..stop of an image source, resized to size x size (bilinear),
    mapped by ``transform`` (the backbone's preprocessing; training puts augmentation in it too) and
    batched, read ahead of the model so the resized images are never all in memory.

    Images of one size are read a batch at a time; images of mixed sizes one at a time, since they
    can only be stacked once resized. Both resize with the same TensorFlow bilinear op.
    """
    import numpy as np
    from featcache.backend import tensorflow
    tf = tensorflow()

    def numpy_source(read, rank):
        def load(index):
            out = tf.numpy_function(lambda i: read(int(i)), [index], tf.uint8, stateful=False)
            out.set_shape((None,) * (rank - 1) + (3,))
            return out
        return load

    def resize(pixels):
        return tf.image.resize(tf.cast(pixels, tf.float32), (size, size), method="bilinear")

    parallel = dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if images.uniform:
        starts = np.arange(start, stop, batch_size, dtype=np.int64)
        read_batch = lambda first: images.read(first, min(first + batch_size, stop))  # noqa: E731
        batches = tf.data.Dataset.from_tensor_slices(starts).map(numpy_source(read_batch, 4), **parallel)
        batches = batches.map(resize, **parallel)
    else:
        rows = tf.data.Dataset.range(start, stop).map(numpy_source(images.read_one, 3), **parallel)
        batches = rows.map(resize, **parallel).batch(batch_size)
    return batches.map(transform, **parallel).prefetch(2)


def feature_batches(images, start: int, stop: int, batch_size: int, spec):
    """Rows start..stop ready for ``spec``'s backbone: resized to its input size and preprocessed its way."""
    return image_batches(images, start, stop, batch_size, spec.input_size, spec.backbone.preprocess_input())
