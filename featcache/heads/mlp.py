"""``mlp``: the reference write-up's dense head in Keras (Dense 1024 relu, Dropout 0.5, softmax).

The standardisation (and PCA, when asked for) fitted by :class:`featcache.heads.base.Head` becomes fixed
layers at the front of the Keras model, so the saved ``.keras`` file maps raw features to class
probabilities on its own, and ``featcache export`` can join it to the backbone as one model.
Early stopping watches the loss on a held-out slice of the training rows and keeps the best epoch
(``validation_fraction=None``: no slice, all the epochs).
"""

import json
from pathlib import Path

import numpy as np

from sklearn.utils.validation import check_is_fitted, validate_data

from featcache.evaluation import spread_columns
from featcache.heads.base import CLASS_WEIGHT, FRACTION, POSITIVE, POSITIVE_INT, Head, sample_weights, validation_slice
from featcache.params import Interval, Options
from featcache.shots import Holdout
from featcache.sweeps import Sweep

OPTIMIZERS = ("adam", "sgd", "rmsprop", "adamw")


class MLPHead(Head):
    name = "mlp"
    parameter_rules = Head.parameter_rules | {
        "units": [POSITIVE_INT], "dropout": [Interval(float, 0, 1, closed="left")], "epochs": [POSITIVE_INT],
        "batch_size": [POSITIVE_INT], "learning_rate": [POSITIVE], "optimizer": [Options(*OPTIMIZERS)],
        "patience": [POSITIVE_INT], "validation_fraction": [FRACTION, None], "l2": [Interval(float, 0, None)],
        "class_weight": CLASS_WEIGHT}
    holdout = Holdout("validation_fraction", {"validation_fraction": None})
    sweep = Sweep("l2", (1e-6, 1e-5, 1e-4, 1e-3, 1e-2), also={"dropout": (0.0, 0.5)})

    def __init__(self, units=1024, dropout=0.5, epochs=30, batch_size=256, learning_rate=1e-3, optimizer="adam",
                 patience=3, validation_fraction=0.1, l2=0.0, class_weight=None, pca=None, random_state=0, copy=True):
        self.units = units
        self.dropout = dropout
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.optimizer = optimizer
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.l2 = l2
        self.class_weight = class_weight
        self.pca = pca
        self.random_state = random_state
        self.copy = copy

    def _fit(self, z, codes):
        from featcache.backend import keras

        keras.utils.set_random_seed(self.random_state)  # weights, dropout and shuffling: same seed, same head
        penalty = keras.regularizers.L2(self.l2) if self.l2 else None  # on both kernels
        net = keras.Sequential([
            keras.Input((z.shape[1],)),
            keras.layers.Dense(self.units, activation="relu", kernel_regularizer=penalty),
            keras.layers.Dropout(self.dropout),
            keras.layers.Dense(len(self.classes_), activation="softmax", kernel_regularizer=penalty),
        ], name="mlp")
        optimizer = keras.optimizers.get({"class_name": self.optimizer,
                                          "config": {"learning_rate": self.learning_rate}})
        net.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
        stopping = self.validation_fraction is not None  # None: every row trains, for all the epochs
        fit_rows, stop_rows = (validation_slice(codes, self.validation_fraction, self.random_state, self.paired_)
                               if stopping else (np.arange(len(codes)), None))
        stop = [keras.callbacks.EarlyStopping(patience=self.patience, restore_best_weights=True)] if stopping else []
        history = net.fit(z[fit_rows], codes[fit_rows],
                          validation_data=(z[stop_rows], codes[stop_rows]) if stopping else None,
                          sample_weight=sample_weights(self.class_weight, codes[fit_rows]), epochs=self.epochs,
                          batch_size=self.batch_size, callbacks=stop, verbose=0)
        self.epochs_run_ = len(history.history["loss"])
        self.model_ = with_front(net, self.front_)
        del self.front_  # the Keras model holds it now

    def _front(self, x):
        """Only the input checks: the Keras model standardises the features itself."""
        check_is_fitted(self)
        return validate_data(self, x, dtype=np.float32, reset=False)

    def _scores(self, x):
        # called directly, batch by batch: model.predict would trace a new function for every fitted head
        from featcache.backend import keras

        return np.concatenate([keras.ops.convert_to_numpy(self.model_(x[i:i + 4096], training=False))
                               for i in range(0, len(x), 4096)])

    def to_keras(self, n_classes: int):
        """The head as a Keras model whose outputs cover classes 0..n_classes-1 (absent classes get 0)."""
        from featcache.backend import keras

        spread = spread_columns(np.eye(len(self.classes_)), self.classes_, n_classes, 0.0).astype(np.float32)
        layer = keras.layers.Dense(n_classes, use_bias=False, trainable=False, name="to_all_classes")
        outputs = layer(self.model_.output)
        layer.set_weights([spread])
        return keras.Model(self.model_.input, outputs, name="mlp_head")

    def save(self, folder: Path) -> str:
        """Write head.keras (features in, probabilities out) and head.json (parameters, classes)."""
        self.model_.save(Path(folder) / "head.keras")
        state = {"params": self.get_params(), "classes": self.classes_.tolist(),
                 "n_features_in": int(self.n_features_in_), "epochs_run": self.epochs_run_}
        (Path(folder) / "head.json").write_text(json.dumps(state))
        return "head.keras"

    @classmethod
    def load(cls, path: Path) -> "MLPHead":
        from featcache.backend import keras

        path = Path(path)
        state = json.loads(path.with_suffix(".json").read_text())
        head = cls(**state["params"])
        head.classes_ = np.array(state["classes"])
        head.n_features_in_, head.epochs_run_ = state["n_features_in"], state["epochs_run"]
        head.model_ = keras.saving.load_model(path)
        return head


def with_front(net, front):
    """One Keras model on raw features: the fitted StandardScaler (+ PCA) ``front``, then ``net``.

    Keras' Normalization layer divides by max(std, 1e-7), which differs from StandardScaler for
    features of tiny variance (those of a random-weights backbone), so it only centres here and
    the division by the scale is folded into the next layer's kernel, exactly.
    """
    from featcache.backend import keras

    scaler, pca = front.steps[0][1], (front.steps[1][1] if len(front.steps) > 1 else None)
    features = keras.Input((len(scaler.mean_),), name="features")
    x = keras.layers.Normalization(mean=scaler.mean_, variance=np.ones_like(scaler.mean_), name="centre")(features)
    inverse_scale = (1.0 / scaler.scale_)[:, None]
    first, *rest = net.layers
    kernel, bias = first.get_weights()
    if pca is not None:
        projection = pca.components_.T / (np.sqrt(pca.explained_variance_) if pca.whiten else 1.0)
        x = _dense(x, inverse_scale * projection, -pca.mean_ @ projection, None, "pca")
    else:
        kernel = inverse_scale * kernel
    x = _dense(x, kernel, bias, first.activation, "hidden")
    for layer in rest:
        x = layer(x)
    return keras.Model(features, x, name="mlp_head")


def _dense(x, kernel, bias, activation, name):
    from featcache.backend import keras

    layer = keras.layers.Dense(kernel.shape[1], activation=activation, name=name)
    out = layer(x)
    layer.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return out
