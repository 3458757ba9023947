"""Comparison report built from result records: ``report.md`` (+ PNG plots beside it) and a
self-contained ``report.html`` (inline CSS, plots as data URIs, nothing fetched when opened).

Numbers are comparable only between records evaluated on the same folds: the same dataset
fingerprint, label set, fold count and fold seed. By default records are grouped by those four
values and each group gets its own section (tables, plots, paired tests), so no table ever mixes
them; with ``strict=True`` a mix is refused with a :class:`FeatcacheError` instead.
"""

import base64
import datetime
import html
from dataclasses import dataclass
from pathlib import Path

from featcache import report_plots as plots
from featcache.errors import FeatcacheError
from featcache.files import check_writable
from featcache.records import pipelines
from featcache.report_tables import (Entry, confusion_table, dataset_table, environment_table, features_table,
                                     fold_table, paired_table, per_class_table, rank, summary_table)
from featcache.stats import most_confused

DEFAULT_TITLE = "featcache comparison report"
TOP_CONFUSIONS = 10
CSS = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
h1, h2 { border-bottom: 1px solid #ddd; padding-bottom: .3rem; }
table { border-collapse: collapse; margin: 1rem 0; font-size: .9rem; }
th, td { border: 1px solid #ccc; padding: .3rem .6rem; text-align: left; }
th { background: #f3f3f3; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafafa; }
img { max-width: 100%; display: block; margin: 1rem 0; }
"""


@dataclass(frozen=True)
class ReportResult:
    markdown: Path
    html: Path
    text: str  # the summary table of each section, for the terminal


@dataclass(frozen=True)
class Heading:
    level: int
    text: str

    def markdown(self) -> str:
        return f"{'#' * self.level} {self.text}"

    def html(self) -> str:
        return f"<h{self.level}>{html.escape(self.text)}</h{self.level}>"


@dataclass(frozen=True)
class Paragraph:
    text: str

    def markdown(self) -> str:
        return self.text

    def html(self) -> str:
        return f"<p>{html.escape(self.text)}</p>"


@dataclass(frozen=True)
class Image:
    """A plot: a PNG file beside report.md, a data URI inside report.html."""

    filename: str
    png: bytes
    alt: str

    def markdown(self) -> str:
        return f"![{self.alt}]({self.filename})"

    def html(self) -> str:
        data = base64.b64encode(self.png).decode("ascii")
        return f'<img src="data:image/png;base64,{data}" alt="{html.escape(self.alt)}">'


def select_records(records: list[dict], dataset=None, backbone=None, label_set=None) -> list[dict]:
    """The records matching every filter given: ``dataset`` by name or fingerprint, ``backbone`` by
    name (fine-tuned models' too), ``label_set`` by name.

    Raises when the filters leave nothing of a non-empty list, naming the values the records do have,
    because an empty report would not say why it is empty.
    """
    wanted = {field: value for field, value in
              (("dataset", dataset), ("backbone", backbone), ("label set", label_set)) if value is not None}
    selected = [r for r in records if all(value in _filter_values(r)[f] for f, value in wanted.items())]
    if records and not selected:
        asked = ", ".join(f"{field} {value}" for field, value in wanted.items())
        there = "; ".join(f"{field}: {', '.join(_values_of(records, field))}" for field in wanted)
        raise FeatcacheError(f"no result record matches {asked} (the records have {there})")
    return selected


def _filter_values(record: dict) -> dict[str, set]:
    dataset = record["dataset"]
    return {
        "dataset": {dataset.get("name"), dataset.get("fingerprint")},
        "backbone": {p["backbone"] for p in pipelines(record)},
        "label set": {dataset.get("label_set")},
    }


def _values_of(records: list[dict], field: str) -> list[str]:
    return sorted({str(v) for r in records for v in _filter_values(r)[field] if v is not None})


GROUP_FIELDS = ("dataset", "label set", "folds", "fold seed")


def group_key(record: dict) -> tuple:
    """What must be equal for two records' fold scores to be compared (see the module docstring)."""
    dataset, cv = record["dataset"], record["cv"]
    name = f"{dataset.get('name')}@{dataset.get('fingerprint')}"
    return (name, dataset.get("label_set"), cv.get("folds"), cv.get("seed"))


def group_records(records: list[dict]) -> list[list[dict]]:
    """Records split by :func:`group_key`, groups in the order they first appear."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        groups.setdefault(group_key(record), []).append(record)
    return list(groups.values())


def check_comparable(records: list[dict]) -> None:
    """Raise a one-line FeatcacheError naming every field whose values differ among ``records``."""
    keys = [group_key(r) for r in records]
    differences = [
        f"{field} {' vs '.join(sorted({str(k[i]) for k in keys}))}"
        for i, field in enumerate(GROUP_FIELDS)
        if len({k[i] for k in keys}) > 1
    ]
    if differences:
        raise FeatcacheError(
            f"records are not comparable: {'; '.join(differences)}; "
            "select one group, or report without strict mode to get one section per group"
        )


def build_report(records: list[dict], out_dir: Path, title: str | None = None, strict: bool = False) -> ReportResult:
    """Write report.md, its PNG plots and report.html into ``out_dir``.

    Records of different datasets, label sets, fold counts or fold seeds go to separate sections;
    ``strict=True`` raises a FeatcacheError for such a mix instead.
    """
    if not records:
        raise FeatcacheError("no result records: run `featcache fit` first")
    if strict:
        check_comparable(records)
    check_writable(out_dir)
    title = title or DEFAULT_TITLE
    groups = group_records(records)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    blocks: list = [Paragraph(
        f"Generated {stamp} from {len(records)} result records in {len(groups)} "
        f"{'group' if len(groups) == 1 else 'groups'} (same dataset, label set, folds and fold seed); "
        "records of different groups are never compared. Accuracy in %, times in seconds per CV fold."
    )]
    text = []
    for number, group in enumerate(groups, start=1):
        entries = rank(group)
        heading = _group_title(group[0])
        blocks += [Heading(2, heading), *_section(entries, f"group{number}")]
        text.append(f"{heading}\n{summary_table(entries).text()}")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for image in (b for b in blocks if isinstance(b, Image)):
        (out_dir / image.filename).write_bytes(image.png)
    markdown, page = out_dir / "report.md", out_dir / "report.html"
    markdown.write_text("\n\n".join([f"# {title}", *(b.markdown() for b in blocks)]) + "\n", encoding="utf-8")
    page.write_text(_html_page(title, blocks), encoding="utf-8")
    return ReportResult(markdown, page, "\n\n".join(text))


def _group_title(record: dict) -> str:
    _, label_set, folds, seed = group_key(record)
    dataset = record["dataset"]
    fingerprint = (dataset.get("fingerprint") or "")[:8]
    return f"{dataset.get('name')} ({fingerprint}), label set {label_set}: {folds}-fold CV, seed {seed}"


def _section(entries: list[Entry], prefix: str) -> list:
    """The blocks of one group's section; ``prefix`` keeps its PNG file names apart from other groups'."""
    labels = [e.label for e in entries]
    means, stds = zip(*(e.cv("accuracy") for e in entries))
    return [
        Heading(3, "Summary"),
        Paragraph("Sorted by CV accuracy, best first. CV figures are means over the folds."),
        summary_table(entries),
        Image(f"{prefix}-accuracy.png", plots.accuracy_plot(labels, means, stds, [e.test("accuracy") for e in entries]),
              "CV accuracy with std over folds per approach"),
        *_time_plot(entries, prefix),
        Heading(3, "Accuracy per fold"),
        fold_table(entries, entries[0].record["cv"]["folds"]),
        *_paired_section(entries),
        *_confusion_section(entries[0], prefix),
        *_per_class_section(entries),
        *_sweep_section(entries, prefix),
        *_shots_section(entries, prefix),
        Heading(3, "Provenance"),
        dataset_table(entries[0].record),
        Heading(4, "Backbones and features"),
        features_table(entries),
        Heading(4, "Library versions and machine"),
        environment_table(entries),
    ]


def _time_plot(entries: list[Entry], prefix: str) -> list:
    """Accuracy against fit time, of the approaches with a fit time above 0 (log axis); none for fewer than two."""
    timed = [e for e in entries if (e.cv("fit_seconds")[0] or 0) > 0]
    if len(timed) < 2:
        return []
    means, stds = zip(*(e.cv("accuracy") for e in timed))
    png = plots.accuracy_vs_time_plot([e.label for e in timed], [e.cv("fit_seconds")[0] for e in timed], means, stds)
    return [Image(f"{prefix}-accuracy-vs-fit-time.png", png, "CV accuracy against fit time per fold")]


def _paired_section(entries: list[Entry]) -> list:
    blocks = [Heading(3, f"Paired comparison with the best: {entries[0].label}")]
    if len(entries) == 1:
        return blocks + [Paragraph("Only one approach in this group: nothing to compare.")]
    return blocks + [
        Paragraph(
            "Corrected resampled t-test (Nadeau & Bengio 2003) on the per-fold accuracy differences: "
            "t = mean(d) / sqrt((1/k + 1/(k-1)) * var(d)), df = k-1, two-sided p. "
            "A plain paired t-test on CV folds calls far too many differences significant."
        ),
        paired_table(entries),
    ]


def _confusion_section(best: Entry, prefix: str) -> list:
    """Heatmap and most-confused pairs of the best approach: test matrix if it has one, else CV out-of-fold."""
    matrix, source = _matrix(best.record)
    blocks = [Heading(3, f"Confusion matrix: {best.label}")]
    if matrix is None:
        return blocks + [Paragraph("The best approach's record has no confusion matrix.")]
    names = best.record["dataset"]["class_names"]
    pairs = most_confused(matrix, names, TOP_CONFUSIONS)
    blocks += [
        Paragraph(f"From the {source}. Rows are true classes; colour is the share of the true class."),
        Image(f"{prefix}-confusion.png", plots.confusion_plot(matrix, names, f"{best.label} ({source})"),
              f"confusion matrix of {best.label}"),
        Heading(4, "Most confused classes"),
        Paragraph(f"The {TOP_CONFUSIONS} largest off-diagonal cells, each direction on its own."),
    ]
    return blocks + [confusion_table(pairs) if pairs else Paragraph("No misclassifications.")]


def _matrix(record: dict) -> tuple:
    """(confusion matrix, where it comes from): the test split's if there is one, else the CV out-of-fold one."""
    test, cv = (record.get("test") or {}).get("confusion_matrix"), record["cv"].get("confusion_matrix")
    return (test, "test set") if test is not None else (cv, "CV out-of-fold predictions")


def _per_class_section(entries: list[Entry]) -> list:
    blocks = [Heading(3, "Precision and recall per class"),
              Paragraph("Each approach's test-set confusion matrix, else its CV out-of-fold one. "
                        "Balanced accuracy is the mean of the recalls.")]
    for entry in entries:
        matrix, source = _matrix(entry.record)
        if matrix is not None:
            blocks += [Heading(4, f"{entry.label} ({source})"),
                       per_class_table(matrix, entry.record["dataset"]["class_names"])]
    return blocks


def _sweep_section(entries: list[Entry], prefix: str) -> list:
    """A plot of each swept approach's curves: validation accuracy against the swept value."""
    swept = [(number, e) for number, e in enumerate(entries) if e.record["cv"].get("sweep")]
    if not swept:
        return []
    blocks = [Heading(3, "Sweeps"), Paragraph(
        "Validation accuracy (on a stratified slice of the training rows) at each swept value: the final fit on "
        "the whole training split, and each CV training fold in grey; the best point of each was refitted.")]
    for number, entry in swept:
        sweep = entry.record["cv"]["sweep"]
        folds = [m["sweep_curve"] for m in entry.record["cv"]["fold_metrics"] if m.get("sweep_curve")]
        png = plots.sweep_plot(sweep["parameter"], sweep["log"], sweep["final_curve"], folds, entry.label)
        blocks.append(Image(f"{prefix}-sweep{number}.png", png, f"sweep of {entry.label}"))
    return blocks


def _shots_section(entries: list[Entry], prefix: str) -> list:
    """One plot of every approach's learning curve (fit with shots): accuracy against images per class."""
    curved = [e for e in entries if e.record.get("shots")]
    if not curved:
        return []
    curves, notes = [], []
    for entry in curved:
        dataset, shots = entry.record["dataset"], entry.record["shots"]
        every = dataset["n_train"] / len(dataset["class_names"])  # "all": the mean count per class
        points = shots["points"]
        curves.append(([every if p["shots"] == "all" else p["shots"] for p in points],
                       [p["accuracies"] for p in points]))
        fallen = [str(p["shots"]) for p in points if p["fallback"]]
        if fallen:
            settings = ", ".join(f"{k}={v}" for k, v in next(p["fallback"] for p in points if p["fallback"]).items())
            notes.append(f"{entry.label}: at {', '.join(fallen)} images per class too few to hold out a slice of "
                         f"each class, trained with {settings}.")
    scored_on = {e.record["shots"]["scored_on"] for e in curved}
    return [Heading(3, "Learning curves"), Paragraph(
        f"Accuracy on the {' and '.join(sorted(scored_on))} against the training images per class (\"all\" at the "
        f"mean count per class): the mean over {curved[0].record['shots']['repeats']} seeded draws, nested and the "
        "same for every approach, in a band from the lowest to the highest draw."),
        Image(f"{prefix}-learning-curves.png", plots.learning_curve_plot([e.label for e in curved], curves),
              "accuracy against images per class"),
        *(Paragraph(note) for note in notes)]


def _html_page(title: str, blocks: list) -> str:
    body = "\n".join(b.html() for b in blocks)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
        f"<style>{CSS}</style>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body>\n</html>\n"
    )
