"""Fine-tuning a pretrained backbone end to end, in two phases (the ``featcache finetune`` stage).

Phase 1 ("head") trains a new head (the backbone's global pooling, dropout, a softmax Dense layer)
on the frozen backbone; phase 2 ("finetune") also trains the backbone's top ``unfreeze`` blocks at
a much lower learning rate. The backbone's BatchNorm layers stay frozen and in inference mode
throughout (it is called with ``training=False``, and phase 2 never unfreezes a BatchNorm layer):
their moving statistics never change, which keeps small fine-tuning batches from wrecking the
ImageNet statistics.

A "block" is defined per backbone by its registry entry's ``blocks`` patterns
(:mod:`featcache.backbones`); unfreezing N blocks trains every layer from the
first layer of the N-th block from the top to the output.

Phase 1 may start from a Keras head (``mlp``) already fitted on the cached features of the same
backbone (``init_head``, a head result record): that head replaces the new one, so the cache's work
is reused.
"""

import re
from dataclasses import asdict, replace
from pathlib import Path

from featcache.backend import keras

from featcache import records
from featcache.backbones import BackboneSpec, build_feature_model, get_backbone, weights_sha256
from featcache.datasets import Dataset
from featcache.errors import FeatcacheError, ParameterError
from featcache.images import affine_layer
from featcache.params import Options, check
from featcache.settings import FinetuneSettings, TrainOptions
from featcache.training import Phase, augmentation, compile_model, precision_policy, train_and_evaluate



def block_starts(backbone, layers) -> list[int]:
    """The index in ``layers`` of the first layer of each block of ``backbone`` (an entry or its name), bottom
    to top."""
    entry = get_backbone(backbone) if isinstance(backbone, str) else backbone
    if not entry.blocks:
        return [i for i, layer in enumerate(layers) if layer.weights]
    starts = []
    for pattern in entry.blocks:
        found = next((i for i, layer in enumerate(layers) if re.match(pattern, layer.name)), None)
        if found is None:
            raise FeatcacheError(f"{entry.name} has no layer matching {pattern!r}: update its blocks in "
                                 "featcache.backbones")
        starts.append(found)
    return starts


def nested_layers(model) -> list[tuple]:
    """Every layer inside ``model``, nested ones too (a hub backbone's transformer blocks), parents before
    their children: (layer, index of its last descendant)."""
    found = []

    def visit(layer):
        for child in layer._flatten_layers(include_self=False, recursive=False):
            found.append([child, len(found)])
            index = len(found) - 1
            visit(child)
            found[index][1] = len(found) - 1

    visit(model)
    return [tuple(pair) for pair in found]


def unfreeze_top_blocks(backbone, entry, count: int) -> None:
    """Make the top ``count`` blocks of ``backbone`` (the model of ``entry``, a registry entry or its name)
    trainable, except their BatchNorm layers, and everything below them frozen.

    A frozen BatchNorm layer runs in inference mode whatever ``training`` says; ``training=False`` at the
    backbone's call alone does not stop ``fit`` from updating the moving statistics of trainable ones.
    A layer holding blocks (a transformer's encoder) is trainable and its layers below the blocks are not.
    """
    entry = get_backbone(entry) if isinstance(entry, str) else entry
    layers = nested_layers(backbone)
    starts = block_starts(entry, [layer for layer, _ in layers])
    if not 1 <= count <= len(starts):
        raise ParameterError("unfreeze", count, f"between 0 and the {len(starts)} blocks of {entry.name}")
    backbone.trainable = True
    for layer, last in layers:  # a parent before its children: they override what it set
        layer.trainable = last >= starts[-count] and not isinstance(layer, keras.layers.BatchNormalization)


def backbone_of(model):
    """The backbone inside a fine-tuning model: its first nested model (a fitted head may be another)."""
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def init_head_file(record: dict, spec: BackboneSpec, dataset_fingerprint: str, label_set: str) -> Path:
    """The saved Keras head of ``record``, checked to be fitted on ``spec``'s features of the same labels."""
    model_file = record.get("model_file") or ""
    if record["kind"] != "head" or not model_file.endswith(".keras"):
        raise FeatcacheError(f"init_head: record {record['id']} ({record['approach']}) has no saved Keras head: "
                             "give the record of an mlp head")
    parts = records.feature_parts(record["features"])
    if len(parts) > 1:
        raise FeatcacheError(f"init_head: record {record['id']} was fitted on {len(parts)} fused caches, not on "
                             "one backbone's features: give the record of an mlp head fitted on this backbone alone")
    fitted_on = {**parts[0]["backbone"], "weights_sha256": parts[0]["weights_sha256"]}
    wanted = {**spec.to_record(), "weights_sha256": weights_sha256(spec)}
    differences = [f"{key} {fitted_on.get(key)} vs {value}" for key, value in wanted.items()
                   if key != "weights" and fitted_on.get(key) != value]  # the same weights may lie elsewhere
    if differences:
        raise FeatcacheError(f"init_head: record {record['id']} was fitted on other features than "
                             f"these ({'; '.join(differences)})")
    dataset = record["dataset"]
    if (dataset["fingerprint"], dataset["label_set"]) != (dataset_fingerprint, label_set):
        raise FeatcacheError(f"init_head: record {record['id']} was fitted on {dataset['name']} "
                             f"({dataset['label_set']} labels), not on this dataset's {label_set} labels")
    return Path(record["_folder"]) / model_file


def fitted_head(path: str, n_classes: int):
    head = keras.saving.load_model(path)
    if head.output_shape[-1] != n_classes:
        raise FeatcacheError(f"init_head: the head in {path} has {head.output_shape[-1]} outputs, "
                             f"not {n_classes} classes")
    return head


class FinetuneRecipe:
    """A backbone and a new (or fitted) head, trained in two phases (see the module docstring)."""

    kind = "finetune"

    def __init__(self, spec: BackboneSpec, settings: FinetuneSettings):
        self.spec, self.config = spec, settings
        self.name = spec.name
        self.input_size = spec.input_size
        self.batch_size = settings.batch_size
        self.settings = {key: value for key, value in asdict(settings).items() if key != "batch_size"}
        start = ", from a fitted head" if settings.init_head else ""
        self.approach = (f"finetune {records.backbone_label(spec.to_record())} "
                         f"(unfreeze {settings.unfreeze}{start})")
        self.provenance = {
            "backbone": spec.to_record(),
            "architecture": None,
            "weights_sha256": weights_sha256(spec),
            "input_size": spec.input_size,
            "preprocessing": spec.backbone.preprocessing,
        }

    def build(self, x, n_classes: int, images, rows):
        with precision_policy():
            backbone = build_feature_model(self.spec)
            features = backbone(x, training=False)  # BatchNorm in inference mode, in both phases
            if self.config.init_head:
                return fitted_head(self.config.init_head, n_classes)(features)
            hidden = keras.layers.Dropout(self.config.dropout)(features)
            return keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="classifier")(hidden)

    def phases(self) -> list[Phase]:
        config = self.config

        def train_head(model, steps):
            backbone_of(model).trainable = False
            compile_model(model, keras.optimizers.Adam(config.learning_rate))

        def train_top_blocks(model, steps):
            unfreeze_top_blocks(backbone_of(model), self.spec.backbone, config.unfreeze)
            compile_model(model, keras.optimizers.Adam(config.finetune_learning_rate))

        phases = [Phase("head", config.epochs, train_head)]
        if config.unfreeze and config.finetune_epochs:
            phases.append(Phase("finetune", config.finetune_epochs, train_top_blocks))
        return phases

    def input_layers(self) -> list:
        augment = augmentation(flip=True, shift=0.1, rotation=0.05, zoom=0.1) if self.config.augment else []
        return augment + [affine_layer(self.spec.input_size, self.spec.backbone.preprocess_input())]


def finetune(dataset: Dataset, spec: BackboneSpec, settings: FinetuneSettings = FinetuneSettings(),
             label_set: str | None = None, options: TrainOptions = TrainOptions(), root=None,
             resume: bool = False, progress: bool = True, callbacks=(), init_head: dict | None = None) -> dict:
    """Fine-tune ``spec``'s backbone on ``dataset``; return the saved result record (see training.train_and_evaluate).

    ``init_head``: an mlp head's result record, fitted on this backbone's cached features of ``dataset``,
    that phase 1 starts from.
    """
    settings.check()
    options.check()
    check("resize", spec.resize, [Options("stretch")], owner="finetune (its images are stretched)")
    if settings.unfreeze:  # a bad --unfreeze fails before any training; layer names do not depend on weights
        unfreeze_top_blocks(build_feature_model(replace(spec, weights="none")), spec.backbone,
                            settings.unfreeze)
    if init_head is not None:
        label_set = label_set or dataset.label_sets[0]
        path = init_head_file(init_head, spec, dataset.fingerprint, label_set)
        settings = replace(settings, init_head=str(path))
    return train_and_evaluate(FinetuneRecipe(spec, settings), dataset, label_set, options, root, resume,
                              progress, callbacks)
