"""What the fine-tuning and from-scratch stages share: data pipelines, checkpointed training, evaluation.

A stage describes its model as a :class:`Recipe` (how to build it, its training phases, its input
transform, its provenance); :func:`train_and_evaluate` then does the same for every stage:

    folds (featcache.evaluation.fold_indices) -> one *unit* per fold, plus the final model on the whole training split
    unit  -> a validation slice of its rows for early stopping, then each phase's model.fit, checkpointed every epoch
    score -> featcache.evaluation.scores on each held-out fold and on the test split -> one result record

Images stream batch by batch from the host (:class:`LabelledBatches`, decoded in threads); the model
itself resizes them, augments them (Keras preprocessing layers, active in training only) and
preprocesses them (:func:`full_model`), so the saved model takes images and every Keras backend runs it.

A run lives in its record's folder; ``record.json`` is written last, so an unfinished run is never
listed as a result:

    run.json              the run's settings: --resume continues the newest unfinished run with equal settings
    fold-1/ .. final/     one folder per unit: state.json, the latest checkpoint-*.keras (model and optimizer
                          state) and best.weights.h5 (lowest validation loss of the phase in progress)
    model.keras           the final model; the units' folders are removed once the record is saved
"""

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from featcache import paths, records
from featcache.backend import dtype_policy, gpu_present, keras, mixed_policy
from featcache.datasets import Dataset
from featcache.errors import FeatcacheError, ParameterError
from featcache.evaluation import confusion, fold_indices, scores, summarize
from featcache.files import check_writable, write_json
from featcache.images import Framing, HostBatches, forward, read_batch
from featcache.settings import TrainOptions

STATE_FILE = "state.json"
BEST_WEIGHTS = "best.weights.h5"
MODEL_FILE = "model.keras"


# --- what a stage supplies --------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    """One ``model.fit`` of a unit. ``start(model, steps_per_epoch)`` sets which weights train and compiles."""

    name: str
    epochs: int
    start: Callable


class Recipe(Protocol):
    kind: str  # "finetune" | "scratch": the record's kind
    name: str  # the record's "head": the backbone or architecture
    approach: str  # the row label in reports
    input_size: int
    batch_size: int
    settings: dict  # the stage's own settings: the record's params, and part of its model dict
    provenance: dict  # backbone, backbone_args, weights, weights_sha256, input_size, pooling, ...

    def build(self, x, n_classes: int, images, rows: np.ndarray):
        """The model's output tensor on ``x`` (resized, augmented, preprocessed images); ``images``/``rows``
        are its training images, for statistics."""

    def phases(self) -> list[Phase]:
        ...

    def input_layers(self) -> list:
        """Layers between the resized images and ``build``: augmentation (Keras' random layers act only in
        training) and preprocessing."""


# --- data ---------------------------------------------------------------------------------------


@dataclass
class TrainingData:
    """The training split, its labels, and the test split when the dataset has one."""

    dataset: Dataset
    fingerprint: str
    label_set: str
    images: object
    labels: np.ndarray
    test_images: object | None
    test_labels: np.ndarray | None

    @property
    def class_names(self) -> list[str]:
        return self.dataset.class_names[self.label_set]


def training_data(dataset: Dataset, label_set: str | None = None) -> TrainingData:
    label_set = label_set or dataset.label_sets[0]
    if label_set not in dataset.class_names:
        raise FeatcacheError(f"dataset {dataset.name} has no label set {label_set!r} "
                             f"(it has {', '.join(dataset.label_sets)})")
    train_name = dataset.train_split
    train, test = dataset.splits[train_name], dataset.splits.get("test") if train_name != "test" else None
    return TrainingData(dataset, dataset.fingerprint, label_set, train.images, train.labels[label_set],
                        test and test.images, test and test.labels[label_set])


class Subset:
    """Rows ``rows`` of an image source, in that order, readable like an image source."""

    def __init__(self, images, rows):
        self.images, self.rows = images, np.asarray(rows)

    def __len__(self):
        return len(self.rows)

    def read_one(self, index: int) -> np.ndarray:
        return self.images.read_one(self.rows[index])


def native_size(images) -> int:
    """The height of the first image: the size a model trained from scratch takes by default."""
    return int(images.read_one(0).shape[0])


class LabelledBatches(keras.utils.PyDataset):
    """(images, labels) batches for ``model.fit``, decoded on the host by Keras' worker threads.

    With ``seed``, each epoch is its own permutation of ``rows`` cut to whole batches, depending on
    (seed, epoch) only, so a resumed run sees the batches a run that never stopped would; without,
    the rows in order (validation).
    """

    def __init__(self, images, labels: np.ndarray, rows: np.ndarray, batch_size: int, size: int,
                 seed: int | None = None, first_epoch: int = 0):
        super().__init__(workers=min(4, os.cpu_count() or 1), use_multiprocessing=False)
        self.images, self.labels, self.rows, self.batch_size, self.size = images, labels, rows, batch_size, size
        self.seed, self.epoch = seed, first_epoch

    def __len__(self):
        return steps_per_epoch(len(self.rows), self.batch_size) if self.seed is not None \
            else -(-len(self.rows) // self.batch_size)

    def order(self) -> np.ndarray:
        if self.seed is None:
            return self.rows
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.rows)

    def __getitem__(self, index: int):
        rows = self.order()[index * self.batch_size:(index + 1) * self.batch_size]
        return read_batch(Subset(self.images, rows), 0, len(rows), Framing(self.size)), self.labels[rows]

    def on_epoch_end(self):
        self.epoch += 1


def steps_per_epoch(rows: int, batch_size: int) -> int:
    return max(rows // batch_size, 1)


def augmentation(flip: bool = True, shift: float = 0.0, rotation: float = 0.0, zoom: float = 0.0,
                 fill_mode: str = "reflect", seed: int = 0) -> list:
    """Random horizontal flips, shifts, rotations and zooms, drawn per image (Keras preprocessing layers,
    which act only in training)."""
    layers = []
    if flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if shift:
        layers.append(keras.layers.RandomTranslation(shift, shift, fill_mode=fill_mode, seed=seed,
                                                     interpolation="nearest"))
    if rotation:
        layers.append(keras.layers.RandomRotation(rotation, fill_mode=fill_mode, seed=seed))
    if zoom:
        layers.append(keras.layers.RandomZoom(zoom, fill_mode=fill_mode, seed=seed))
    return layers


def full_model(recipe: Recipe, n_classes: int, images, rows: np.ndarray):
    """Images of any size (float32 pixels) -> resize -> the recipe's input layers -> its model, as one model."""
    inputs = keras.Input((None, None, 3), name="images")
    x = inputs
    for layer in [*Framing(recipe.input_size).layers(), *recipe.input_layers()]:
        x = layer(x)
    return keras.Model(inputs, recipe.build(x, n_classes, images, rows), name=recipe.name.replace("-", "_"))


def validation_split(labels: np.ndarray, rows: np.ndarray, fraction: float, seed: int):
    """(rows to fit, rows to validate on): a stratified slice of ``rows`` held out for early stopping."""
    from sklearn.model_selection import train_test_split

    if not fraction:
        return rows, rows[:0]
    y = labels[rows]
    classes = np.unique(y)
    size = max(int(round(len(rows) * fraction)), len(classes))
    if size >= len(rows):
        raise ParameterError("val_split", fraction, f"smaller: it leaves no training images ({len(rows)} in all)")
    stratify = y if np.bincount(y)[classes].min() >= 2 else None
    fit, held_out = train_test_split(rows, test_size=size, stratify=stratify, random_state=seed)
    return np.sort(fit), np.sort(held_out)


# --- the accelerator ----------------------------------------------------------------------------


def precision_policy():
    """Layers built inside use mixed precision on a GPU (float32 elsewhere); the global policy is restored after."""
    return dtype_policy(mixed_policy() if gpu_present() else None)


def compile_model(model, optimizer) -> None:
    """Sparse cross-entropy and accuracy; Keras compiles with XLA where it pays. (It adds loss scaling for
    mixed float16 itself.)"""
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  jit_compile="auto")


# --- checkpointed training of one unit ------------------------------------------------------------


@dataclass
class UnitState:
    """Where a unit's training stands; saved with every checkpoint."""

    phase: int = 0  # index of the phase in progress; len(phases) when the unit is trained
    epoch: int = 0  # epochs finished in that phase
    best: float | None = None  # lowest validation loss of that phase
    wait: int = 0  # epochs since it was last lowered
    seconds: float = 0.0  # training time so far, over every session
    checkpoint: str | None = None  # file name of the latest checkpoint
    history: dict = field(default_factory=dict)  # phase name -> per-epoch logs

    @classmethod
    def load(cls, folder: Path) -> "UnitState":
        path = folder / STATE_FILE
        return cls(**json.loads(path.read_text())) if path.is_file() else cls()

    def phase_over(self, phase: Phase, patience: int) -> bool:
        return self.epoch >= phase.epochs or bool(patience and self.wait >= patience)


def save_checkpoint(model, folder: Path, state: UnitState) -> None:
    """Save the model (with its optimizer state), then point state.json at it; then drop the older one.

    state.json is replaced atomically, so it always names a whole checkpoint.
    """
    previous, state.checkpoint = state.checkpoint, f"checkpoint-{state.phase}-{state.epoch}.keras"
    model.save(folder / state.checkpoint)
    write_json(folder / STATE_FILE, asdict(state))
    if previous and previous != state.checkpoint:
        (folder / previous).unlink(missing_ok=True)


class Checkpoint(keras.callbacks.Callback):
    """After every epoch: the history, early stopping on validation loss, then a checkpoint."""

    def __init__(self, folder: Path, state: UnitState, phase: Phase, patience: int):
        super().__init__()
        self.folder, self.state, self.phase, self.patience = folder, state, phase, patience
        self.started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        state = self.state
        state.seconds += time.perf_counter() - self.started
        state.epoch = epoch + 1
        logs = {key: float(value) for key, value in (logs or {}).items()}
        state.history.setdefault(self.phase.name, []).append(logs)
        if self.patience and "val_loss" in logs:
            if state.best is None or logs["val_loss"] < state.best:
                state.best, state.wait = logs["val_loss"], 0
                self.model.save_weights(self.folder / BEST_WEIGHTS)
            else:
                state.wait += 1
                self.model.stop_training = state.wait >= self.patience
        save_checkpoint(self.model, self.folder, state)


def train_unit(recipe: Recipe, data: TrainingData, rows: np.ndarray, folder: Path, options: TrainOptions,
               progress: bool = True, callbacks=()):
    """Train (or go on training) one model on ``rows`` of the training split; return it and its state."""
    folder.mkdir(parents=True, exist_ok=True)
    state = UnitState.load(folder)
    keras.utils.set_random_seed(options.seed)
    if state.checkpoint:
        model = keras.models.load_model(folder / state.checkpoint)
    else:
        model = full_model(recipe, len(data.class_names), data.images, rows)
    fit_rows, val_rows = validation_split(data.labels, rows, options.val_split, options.seed)
    size, batch_size = recipe.input_size, recipe.batch_size
    steps = steps_per_epoch(len(fit_rows), batch_size)
    val = LabelledBatches(data.images, data.labels, val_rows, batch_size, size) if len(val_rows) else None
    phases = recipe.phases()
    for index in range(state.phase, len(phases)):
        phase = phases[index]
        if state.epoch == 0:
            phase.start(model, steps)
        if not state.phase_over(phase, options.patience):
            _say(progress, f"{folder.name}: phase {phase.name}, epochs {state.epoch + 1}-{phase.epochs}")
            train = LabelledBatches(data.images, data.labels, fit_rows, batch_size, size, options.seed, state.epoch)
            model.fit(train, epochs=phase.epochs, initial_epoch=state.epoch, validation_data=val, shuffle=False,
                      verbose=1 if progress else 0,
                      callbacks=[Checkpoint(folder, state, phase, options.patience), *callbacks])
        _finish_phase(model, folder, state)
    return model, state


def _finish_phase(model, folder: Path, state: UnitState) -> None:
    """Go back to the phase's best weights (when early stopping kept them), then checkpoint the next phase's start."""
    best = folder / BEST_WEIGHTS
    if best.is_file():
        model.load_weights(best)
        best.unlink()
    state.phase, state.epoch, state.best, state.wait = state.phase + 1, 0, None, 0
    save_checkpoint(model, folder, state)


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


# --- evaluation --------------------------------------------------------------------------------


class KerasClassifier:
    """What :func:`featcache.cv.scores` needs of an estimator, for a Keras model over image sources."""

    def __init__(self, model, recipe: Recipe, n_classes: int):
        self.model, self.recipe = model, recipe
        self.classes_ = np.arange(n_classes)

    def predict_proba(self, images) -> np.ndarray:
        run = forward(self.model, self.recipe.batch_size)
        batches = HostBatches(images, 0, len(images), self.recipe.batch_size, Framing(self.recipe.input_size))
        return np.concatenate([run(batch) for batch in batches]).astype(np.float64)


def evaluate(model, recipe: Recipe, images, labels: np.ndarray, rows: np.ndarray, n_classes: int):
    """The metrics of ``model`` on ``rows`` of an image source (as cv.scores computes them), and its predictions."""
    return scores(KerasClassifier(model, recipe, n_classes), Subset(images, rows), labels[rows], n_classes)


# --- a whole run ---------------------------------------------------------------------------------


def train_and_evaluate(recipe: Recipe, dataset: Dataset, label_set: str | None = None,
                       options: TrainOptions = TrainOptions(), root=None, resume: bool = False,
                       progress: bool = True, callbacks=()) -> dict:
    """Cross-validate (with ``options.folds``), train the final model on the whole training split, score it
    on the test split, save it and its result record; return the record.

    ``resume`` continues the newest unfinished run with the same settings from its checkpoints.
    ``callbacks`` are extra Keras callbacks for every ``model.fit``.
    """
    options.check()
    check_writable(paths.results_dir(root))  # before the training, not after it
    data = training_data(dataset, label_set)
    if not options.folds and data.test_images is None:
        raise FeatcacheError(f"dataset {dataset.name} has no test split to score on: cross-validate with folds=K")
    n_classes = len(data.class_names)
    folds = fold_indices(data.labels, options.folds, options.seed) if options.folds else []
    folder = _run_folder(_run_settings(recipe, data, options), recipe.name, root, resume)

    def train(rows, unit):
        return train_unit(recipe, data, rows, folder / unit, options, progress, callbacks)

    fold_metrics, out_of_fold = [], np.empty_like(data.labels)
    for number, (rows, held_out) in enumerate(folds, start=1):
        model, state = train(rows, f"fold-{number}")
        metrics, out_of_fold[held_out] = evaluate(model, recipe, data.images, data.labels, held_out, n_classes)
        fold_metrics.append({**metrics, "fit_seconds": round(state.seconds, 3)})
    model, state = train(np.arange(len(data.labels)), "final")
    test = None
    if data.test_images is not None:
        everything = np.arange(len(data.test_labels))
        metrics, predicted = evaluate(model, recipe, data.test_images, data.test_labels, everything, n_classes)
        test = {**metrics, "fit_seconds": round(state.seconds, 3),
                "confusion_matrix": confusion(data.test_labels, predicted, n_classes)}
    cv = {"folds": options.folds, "seed": options.seed, "fold_metrics": fold_metrics,
          "summary": summarize(fold_metrics) if fold_metrics else {},
          "confusion_matrix": confusion(data.labels, out_of_fold, n_classes)
          if folds else None}
    model.save(folder / MODEL_FILE)
    record = _record(recipe, data, folder.name, options, cv, test, state.history)
    records.save_record(record, root)
    for unit in folder.iterdir():
        if unit.is_dir():
            shutil.rmtree(unit)
    return record


def _run_settings(recipe: Recipe, data: TrainingData, options: TrainOptions) -> dict:
    """Everything that decides a run's outcome: a run resumes only into equal settings."""
    return json.loads(json.dumps({
        "kind": recipe.kind, "name": recipe.name, "settings": recipe.settings, "model": recipe.provenance,
        "dataset": data.fingerprint, "label_set": data.label_set, "options": asdict(options),
    }))


def _run_folder(settings: dict, name: str, root, resume: bool) -> Path:
    """The newest unfinished run with these settings (``resume``), else a new record folder."""
    if resume:
        unfinished = [p.parent for p in sorted(paths.results_dir(root).glob(f"*/{records.RUN_FILE}"))
                      if not (p.parent / records.RECORD_FILE).exists() and json.loads(p.read_text()) == settings]
        if not unfinished:
            raise FeatcacheError(f"resume: no unfinished {name} run with these settings in "
                                 f"{paths.results_dir(root)}; start one without resume")
        return unfinished[-1]
    folder = records.record_folder(records.new_record_id(name), root)
    staging = folder.with_name(f".{folder.name}")  # hidden until run.json makes it a resumable run
    staging.mkdir(parents=True)
    write_json(staging / records.RUN_FILE, settings)
    staging.rename(folder)
    return folder


def _record(recipe: Recipe, data: TrainingData, record_id: str, options: TrainOptions, cv: dict, test,
            history: dict) -> dict:
    params = {**recipe.settings, "batch_size": recipe.batch_size, "val_split": options.val_split,
              "patience": options.patience}
    record = records.build_record(
        kind=recipe.kind, name=recipe.name, approach=recipe.approach, params=params,
        dataset=records.dataset_entry(data.dataset.name, data.fingerprint, data.label_set, data.class_names,
                                      len(data.labels), None if data.test_labels is None else len(data.test_labels),
                                      np.bincount(data.labels, minlength=len(data.class_names)).tolist()),
        model={**recipe.provenance, **params}, cv=cv, test=test,
        history=history, record_id=record_id,  # history: per-epoch logs of the final model, by phase
    )
    return {**record, "model_file": MODEL_FILE}
