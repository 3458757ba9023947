"""The settings of the training stages (finetune and scratch), with their rules as data.

Kept apart from the stages themselves so that the command line reads their defaults and checks
without importing Keras.
"""

from dataclasses import asdict, dataclass, replace

from featcache.params import BOOLEAN, Interval, Options, Rule, validate


@dataclass(frozen=True)
class TrainOptions:
    """How any stage is trained and evaluated, whatever its model."""

    folds: int = 0  # 0: no cross-validation (the record's cv has no folds); else k-fold CV, then the final model
    seed: int = 0  # folds, validation slice, shuffling, initialisation
    val_split: float = 0.1  # share of each unit's training rows held out for early stopping; 0: none
    patience: int = 3  # epochs without a lower validation loss before a phase stops; 0: never early

    RULES = {"folds": [Options(0), Interval(int, 2, None)], "seed": [Interval(int, 0, None)],
             "val_split": [Interval(float, 0, 1, closed="left")], "patience": [Interval(int, 0, None)]}

    def check(self) -> None:
        validate(asdict(self), self.RULES)


@dataclass(frozen=True)
class FinetuneSettings:
    epochs: int = 5  # phase 1: the head on the frozen backbone
    finetune_epochs: int = 5  # phase 2: the head and the top blocks
    unfreeze: int = 1  # blocks trained in phase 2 (0: no phase 2)
    learning_rate: float = 1e-3  # Adam, phase 1
    finetune_learning_rate: float = 1e-5  # Adam, phase 2
    dropout: float = 0.2  # before the softmax layer of a new head
    batch_size: int = 32
    augment: bool = True  # random flip, shift, rotation and zoom
    init_head: str | None = None  # a fitted Keras head file phase 1 starts from (see init_head_file)

    RULES = {"epochs": [Interval(int, 1, None)], "finetune_epochs": [Interval(int, 0, None)],
             "unfreeze": [Interval(int, 0, None)], "learning_rate": [Interval(float, 0, None, closed="neither")],
             "finetune_learning_rate": [Interval(float, 0, None, closed="neither")],
             "dropout": [Interval(float, 0, 1, closed="left")], "batch_size": [Interval(int, 1, None)],
             "augment": [BOOLEAN]}

    def check(self) -> None:
        validate(asdict(self), self.RULES)


@dataclass(frozen=True)
class ScratchSettings:
    model: str = "basic-cnn"  # basic-cnn or wrn
    epochs: int = 50
    learning_rate: float = 1e-3
    batch_size: int = 32
    dropout: float = 0.25  # basic-cnn: after each conv block; wrn: between a block's convolutions
    depth: int = 28  # wrn only
    width: int = 10  # wrn only
    weight_decay: float = 5e-4  # wrn only
    augment: bool = True
    input_size: int | None = None  # None: the dataset's native size

    RULES = {"model": [Options("basic-cnn", "wrn")], "epochs": [Interval(int, 1, None)],
             "learning_rate": [Interval(float, 0, None, closed="neither")], "batch_size": [Interval(int, 1, None)],
             "dropout": [Interval(float, 0, 1, closed="left")],
             "depth": [Rule(lambda d: isinstance(d, int) and d >= 10 and (d - 4) % 6 == 0,
                            "6n+4 and at least 10 (e.g. 16, 22, 28, 40)")],
             "width": [Interval(int, 1, None)], "weight_decay": [Interval(float, 0, None)], "augment": [BOOLEAN],
             "input_size": [Interval(int, 1, None), None]}

    def check(self) -> None:
        validate(asdict(self), self.RULES)


MODEL_DEFAULTS = {
    "basic-cnn": ScratchSettings(),
    "wrn": ScratchSettings("wrn", epochs=200, learning_rate=0.1, batch_size=128, dropout=0.0),
}


def scratch_settings(model: str, **changes) -> ScratchSettings:
    """``model``'s default settings with every change that is not None applied, checked."""
    validate({"model": model}, ScratchSettings.RULES)
    settings = replace(MODEL_DEFAULTS[model], **{key: value for key, value in changes.items() if value is not None})
    settings.check()
    return settings
