"""Score a fitted model on a labelled dataset it never saw, through the record's own pipeline.

The images go through exactly what ``predict`` uses (:func:`featcache.predict.record_pipeline`: the
backbone and head rebuilt from the record, or a finetune/scratch model), and are scored with the
metrics of cross-validation (:func:`featcache.evaluation.scores`). The dataset's classes are matched to
the record's by name, so a folder tree need only hold some of the classes, in any order; images of a
class the model never saw are refused.

What is scored: the dataset's test split when it has one, else its training split (for a folder of
class sub-folders without split folders, every image). The result is a record of its own, kind
"evaluation", with the metrics and confusion matrix under "test", no CV (``cv.folds`` 0), and the id
of the fitted record under "evaluated"; the report puts it in the section of the evaluation dataset.
"""

import warnings

import numpy as np

from featcache import records
from featcache.datasets import Dataset
from featcache.errors import FeatcacheError
from featcache.evaluation import confusion, scores
from featcache.params import Interval, check
from featcache.predict import record_pipeline

KIND = "evaluation"


class RecordModel:
    """What :func:`featcache.evaluation.scores` needs of an estimator, for a record's pipeline over image sources."""

    def __init__(self, record: dict, batch_size: int):
        self.record, self.batch_size = record, batch_size
        self.classes_ = np.arange(len(record["dataset"]["class_names"]))

    def predict_proba(self, images) -> np.ndarray:
        batches, probabilities = record_pipeline(self.record, self.batch_size)
        return np.concatenate([probabilities(batch) for batch in batches(images)])


def evaluated_split(dataset: Dataset) -> str:
    """The split scored: "test" when the dataset has one, else its training split."""
    return "test" if "test" in dataset.splits else dataset.train_split


def matched_labels(record: dict, dataset: Dataset, label_set: str, labels: np.ndarray) -> np.ndarray:
    """``labels`` (of ``dataset``'s ``label_set``) as indices of the record's classes, matched by name."""
    known = {name: index for index, name in enumerate(record["dataset"]["class_names"])}
    names = dataset.class_names[label_set]
    present = [names[i] for i in np.unique(labels)]
    unseen = [name for name in present if name not in known]
    if unseen:
        raise FeatcacheError(
            f"{dataset.name} has images of classes record {record['id']} never saw: {', '.join(unseen)} "
            f"(its classes: {', '.join(record['dataset']['class_names'])})")
    mapping = np.array([known.get(name, -1) for name in names], dtype=np.int64)
    return mapping[labels]


def evaluate(record: dict, dataset: Dataset, label_set: str | None = None, batch_size: int = 64,
             root=None) -> dict:
    """Score ``record``'s model on ``dataset`` (see the module docstring); save and return the evaluation record.

    ``label_set``: the dataset's label set to score against (default: the record's when the dataset has
    it, else the dataset's first).
    """
    check("batch_size", batch_size, [Interval(int, 1, None)])
    if record["kind"] == KIND:
        raise FeatcacheError(f"record {record['id']} is an evaluation, not a fitted model: give the record it "
                             f"evaluated ({record.get('evaluated')})")
    if not record.get("model_file"):
        raise FeatcacheError(f"record {record['id']} has no saved model: fit it again")
    fitted_set = record["dataset"]["label_set"]
    label_set = label_set or (fitted_set if fitted_set in dataset.label_sets else dataset.label_sets[0])
    if label_set not in dataset.label_sets:
        raise FeatcacheError(f"{dataset.name} has no label set {label_set!r}: choose from "
                             f"{', '.join(dataset.label_sets)}")
    split_name = evaluated_split(dataset)
    split = dataset.splits[split_name]
    labels = matched_labels(record, dataset, label_set, split.labels[label_set])
    class_names = record["dataset"]["class_names"]
    n_classes = len(class_names)
    with warnings.catch_warnings():  # the model may well predict classes this dataset lacks
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        metrics, predicted = scores(RecordModel(record, batch_size), split.images, labels, n_classes)
    test = {**metrics, "confusion_matrix": confusion(labels, predicted, n_classes).tolist()}
    cv = {"folds": 0, "seed": record["cv"]["seed"], "grid": None, "fold_metrics": [], "summary": {},
          "confusion_matrix": None}
    evaluation = records.build_record(
        kind=KIND, name=record["head"], approach=f"{record['approach']} on {dataset.name}",
        params=record.get("params") or {},
        dataset=records.dataset_entry(dataset.name, dataset.fingerprint, label_set, class_names, 0, len(labels)),
        cv=cv, test=test, features=record.get("features"), model=record.get("model"))
    evaluation = {**evaluation, "evaluated": record["id"], "split": split_name}
    folder = records.save_record(evaluation, root)
    return {**evaluation, "_folder": str(folder)}
