"""The report's tables: figures read from result records and formatted as cells.

Accuracies (and top-5) are in percent, kappa as is, times in seconds per fold (the mean over the CV
folds), each column in one precision; a value a record does not have shows as "—". A :class:`Table`
renders itself as Markdown, HTML or aligned terminal text, so every output shows the same cells.
"""

import html
from collections import Counter
from dataclasses import dataclass

from featcache.evaluation import imbalance, per_class
from featcache.records import pipelines
from featcache.stats import Confusion, corrected_resampled_ttest

MISSING = "—"


@dataclass(frozen=True)
class Table:
    """Rows of text cells; ``align`` has one letter a column: "l" for text, "r" for numbers."""

    headers: list[str]
    rows: list[list[str]]
    align: str

    def _right(self, column: int) -> bool:
        return self.align[column] == "r"

    def markdown(self) -> str:
        rule = ["---:" if self._right(c) else "---" for c in range(len(self.headers))]
        lines = [self.headers, rule, *self.rows]
        return "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines)

    def html(self) -> str:
        def row(cells, tag):
            classes = [' class="num"' if self._right(c) else "" for c in range(len(cells))]
            return "".join(f"<{tag}{cls}>{html.escape(cell)}</{tag}>" for cls, cell in zip(classes, cells))

        body = "".join(f"<tr>{row(cells, 'td')}</tr>" for cells in self.rows)
        return f"<table><thead><tr>{row(self.headers, 'th')}</tr></thead><tbody>{body}</tbody></table>"

    def text(self) -> str:
        lines = [self.headers, *self.rows]
        widths = [max(len(line[c]) for line in lines) for c in range(len(self.headers))]

        def fmt(cells):
            return "  ".join(
                cell.rjust(w) if self._right(c) else cell.ljust(w) for c, (cell, w) in enumerate(zip(cells, widths))
            ).rstrip()

        return "\n".join([fmt(self.headers), "  ".join("-" * w for w in widths), *map(fmt, self.rows)])


@dataclass(frozen=True)
class Entry:
    """One approach in a section: its record and the unique label its row carries."""

    label: str
    record: dict

    def cv(self, metric: str):
        """(mean, std) of a CV metric over the folds, as the record's summary states them."""
        stat = (self.record["cv"].get("summary") or {}).get(metric) or {}
        return stat.get("mean"), stat.get("std")

    def test(self, metric: str):
        return (self.record.get("test") or {}).get(metric)

    @property
    def fold_accuracies(self) -> list[float]:
        return [fold["accuracy"] for fold in self.record["cv"].get("fold_metrics") or []]


def rank(records: list[dict]) -> list[Entry]:
    """Entries best first (highest CV accuracy, then test accuracy); repeated approach names get their record id."""
    repeated = {name for name, n in Counter(r["approach"] for r in records).items() if n > 1}
    entries = [Entry(f"{r['approach']} [{r['id']}]" if r["approach"] in repeated else r["approach"], r)
               for r in records]

    def key(entry):
        cv_mean, test = entry.cv("accuracy")[0], entry.test("accuracy")
        return (cv_mean is None, -(cv_mean or 0.0), -(test or 0.0))

    return sorted(entries, key=key)


def percent(value) -> str:
    return MISSING if value is None else f"{100 * value:.2f}"


def number(value, digits: int = 3) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def summary_table(entries: list[Entry], record_ids: bool = False) -> Table:
    """The main comparison; with ``record_ids`` a last column holds each record's id."""
    headers = ["Approach", "Kind", "CV accuracy %", "CV balanced accuracy %", "Test accuracy %",
               "Test balanced accuracy %", "CV top-5 %", "CV kappa", "Fit s/fold", "Predict s/fold"] + ["Record"] * record_ids
    rows = []
    for e in entries:
        mean, std = e.cv("accuracy")
        cv_cell = MISSING if mean is None else f"{percent(mean)} ± {percent(std)}"
        rows.append([e.label, e.record["kind"], cv_cell, percent(e.cv("balanced_accuracy")[0]),
                     percent(e.test("accuracy")), percent(e.test("balanced_accuracy")),
                     percent(e.cv("top5_accuracy")[0]), number(e.cv("kappa")[0]), number(e.cv("fit_seconds")[0], 2),
                     number(e.cv("predict_seconds")[0], 2)] + [e.record["id"]] * record_ids)
    return Table(headers, rows, "llrrrrrrrr" + "l" * record_ids)


def fold_table(entries: list[Entry], folds: int) -> Table:
    """Accuracy % of every fold, then the mean and std over the folds."""
    headers = ["Approach", *(f"Fold {i}" for i in range(1, folds + 1)), "Mean", "Std"]
    rows = []
    for e in entries:
        accuracies = e.fold_accuracies
        cells = [percent(accuracies[i]) if i < len(accuracies) else MISSING for i in range(folds)]
        rows.append([e.label, *cells, *map(percent, e.cv("accuracy"))])
    return Table(headers, rows, "l" + "r" * (folds + 2))


def paired_table(entries: list[Entry], alpha: float = 0.05) -> Table:
    """Each approach against the best one (``entries[0]``) on the same folds; needs >= 2 folds of both."""
    best = entries[0].fold_accuracies
    headers = ["Approach", "Best − this (pp)", "t", "p", f"Significant at {alpha:g}"]
    rows = []
    for e in entries[1:]:
        accuracies = e.fold_accuracies
        if len(accuracies) != len(best) or len(best) < 2:
            rows.append([e.label, MISSING, MISSING, MISSING, MISSING])
            continue
        test = corrected_resampled_ttest(best, accuracies)
        rows.append([e.label, f"{100 * test.difference:.2f}", f"{test.t:.3f}", f"{test.p:.4f}",
                     "yes" if test.significant(alpha) else "no"])
    return Table(headers, rows, "lrrrl")


def per_class_table(matrix, class_names: list[str]) -> Table:
    """Support, precision % and recall % of every class, from one confusion matrix (rows: true class)."""
    rows = [[name, str(c["support"]), percent(c["precision"]), percent(c["recall"])]
            for name, c in zip(class_names, per_class(matrix))]
    return Table(["Class", "Support", "Precision %", "Recall %"], rows, "lrrr")


def class_counts(record: dict) -> list[int] | None:
    """Training images per class: the dataset entry's, else the row sums of the out-of-fold confusion matrix."""
    counts, matrix = record["dataset"].get("class_counts"), record["cv"].get("confusion_matrix")
    return counts or ([int(sum(row)) for row in matrix] if matrix else None)


def confusion_table(pairs: list[Confusion]) -> Table:
    rows = [[p.true, p.predicted, str(p.count), percent(p.share)] for p in pairs]
    return Table(["True class", "Predicted as", "Count", "% of true class"], rows, "llrr")


def dataset_table(record: dict) -> Table:
    """What the numbers of a section were measured on (shared by all its records)."""
    dataset, cv = record["dataset"], record["cv"]
    fields = [
        ("Dataset", dataset.get("name")),
        ("Fingerprint", dataset.get("fingerprint")),
        ("Label set", dataset.get("label_set")),
        ("Classes", len(dataset.get("class_names") or []) or None),
        ("Train images", dataset.get("n_train")),
        ("Test images", dataset.get("n_test")),
        ("CV folds", cv.get("folds")),
        ("Fold seed", cv.get("seed")),
        ("Imbalance (largest / smallest class)", _imbalance(class_counts(record))),
    ]
    return Table(["Field", "Value"], [[name, _text(value)] for name, value in fields], "ll")


def features_table(entries: list[Entry]) -> Table:
    """The feature pipeline of each approach: one row each of the caches a fused approach was fitted on."""
    headers = ["Approach", "Kind", "Backbone", "Weights", "Weights sha256", "Input size", "Pooling", "Cache key"]
    rows = []
    for e in entries:
        for p in pipelines(e.record):
            sha = p.get("weights_sha256")
            options = ", ".join(f"{k}={v}" for k, v in sorted((p.get("options") or {}).items()))
            backbone = f"{p['backbone']} ({options})" if options and p.get("backbone") else p.get("backbone")
            rows.append([e.label, e.record["kind"], _text(backbone), _text(p.get("weights")),
                         sha[:12] if sha else MISSING, _text(p.get("input_size")), _text(p.get("pooling")),
                         _text(p.get("cache_key"))])
    return Table(headers, rows, "l" * len(headers))


def environment_table(entries: list[Entry]) -> Table:
    rows = []
    for e in entries:
        versions = ", ".join(f"{name} {version}" for name, version in (e.record.get("versions") or {}).items())
        machine = e.record.get("machine") or {}
        where = (f"{_text(machine.get('platform'))}, {_text(machine.get('cpu_count'))} CPUs, "
                 f"GPU: {machine.get('gpu') or 'none'}")
        rows.append([e.label, e.record["id"], versions or MISSING, where])
    return Table(["Approach", "Record", "Versions", "Machine"], rows, "llll")


def _imbalance(counts) -> str | None:
    ratio = imbalance(counts) if counts else None
    present = [c for c in counts or [] if c > 0]
    return None if ratio is None else f"{ratio:.2f} ({max(present)} / {min(present)} training images)"


def _text(value) -> str:
    """A provenance value as a cell: sizes like [224, 224] as 224×224."""
    if value is None or value == "":
        return MISSING
    if isinstance(value, (list, tuple)):
        return "×".join(map(str, value))
    return str(value)
