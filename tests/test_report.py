"""featcache.report: tables equal the records' figures, self-contained HTML, the corrected t-test,
grouping of incompatible records, most-confused class pairs."""

import math
import re

import numpy as np
import pytest
from scipy import stats as scipy_stats

from featcache.errors import FeatcacheError
from featcache.report import build_report, check_comparable, group_records, select_records
from featcache.report_tables import rank
from featcache.stats import corrected_resampled_ttest, most_confused

CLASSES = ["cat", "dog", "fox"]


def make_record(approach, fold_accuracies, *, kind="head", test_accuracy=None, fit_seconds=1.0,
                dataset="pets", fingerprint="fp-pets", label_set="all", seed=0, backbone="mobilenetv2",
                cv_matrix=None, test_matrix=None):
    """A valid result record whose CV summary is computed from ``fold_accuracies``."""
    folds = len(fold_accuracies)
    fold_metrics = [
        {"accuracy": a, "top5_accuracy": min(1.0, a + 0.1), "kappa": a - 0.05, "log_loss": None,
         "macro_f1": a - 0.01, "fit_seconds": fit_seconds, "predict_seconds": fit_seconds / 10}
        for a in fold_accuracies
    ]
    summary = {
        metric: {"mean": float(np.mean(values)), "std": float(np.std(values))}
        for metric in ("accuracy", "top5_accuracy", "kappa", "macro_f1", "fit_seconds", "predict_seconds")
        for values in [[m[metric] for m in fold_metrics]]
    }
    spec = {"name": backbone, "options": {"alpha": 0.35}, "weights": "imagenet", "seed": 0, "input_size": 224,
            "pooling": "avg"}
    features = None if kind != "head" else {
        "cache_key": f"{backbone}-224-avg-0123abcd", "cache_file": "x.h5", "backbone": spec,
        "weights_sha256": "ab" * 32, "preprocessing": "mobilenet", "dtype": "float16",
    }
    model = None if kind == "head" else {"backbone": spec, "architecture": None, "weights_sha256": "ab" * 32,
                                         "input_size": 224, "preprocessing": "mobilenet"}
    test = None if test_accuracy is None else {
        "accuracy": test_accuracy, "top5_accuracy": None, "kappa": None, "log_loss": None, "macro_f1": None,
        "fit_seconds": fit_seconds, "predict_seconds": 0.1, "confusion_matrix": test_matrix,
    }
    return {
        "format": "featcache-result/2", "id": f"20261125-101500-{approach.split()[0]}-abc123",
        "created": "2026-11-25T10:15:00+00:00", "kind": kind, "approach": approach, "head": approach.split()[0],
        "params": {},
        "dataset": {"name": dataset, "fingerprint": fingerprint, "label_set": label_set, "class_names": CLASSES,
                    "n_train": 300, "n_test": 60},
        "features": features, "model": model,
        "cv": {"folds": folds, "seed": seed, "fold_metrics": fold_metrics, "summary": summary,
               "confusion_matrix": cv_matrix},
        "test": test, "model_file": None,
        "versions": {"featcache": "0.1.0", "python": "3.12.0", "numpy": "2.0"},
        "machine": {"platform": "Linux", "processor": "x86_64", "cpu_count": 2, "gpu": None},
    }


SVM = [0.90, 0.92, 0.88, 0.91, 0.93, 0.89]
LOGREG = [0.85, 0.88, 0.86, 0.84, 0.90, 0.87]


@pytest.fixture
def records():
    matrix = [[18, 2, 0], [5, 14, 1], [0, 3, 17]]
    return [
        make_record("logreg on mobilenetv2-224-avg", LOGREG, fit_seconds=0.5),
        make_record("svm on mobilenetv2-224-avg", SVM, test_accuracy=0.9, fit_seconds=2.0, test_matrix=matrix),
        make_record("finetune mobilenetv2", [0.80, 0.82, 0.79, 0.81, 0.83, 0.78], kind="finetune", fit_seconds=300.0),
    ]


def markdown_table(markdown: str, heading: str) -> list[dict]:
    """The first table after ``heading`` as dicts of header -> cell."""
    lines = markdown[markdown.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    headers, body = rows[0], rows[2:]
    return [dict(zip(headers, row)) for row in body]


def test_summary_and_fold_tables_hold_the_records_figures(records, tmp_path):
    result = build_report(records, tmp_path)
    markdown = result.markdown.read_text(encoding="utf-8")

    summary = markdown_table(markdown, "### Summary")
    assert [row["Approach"] for row in summary] == [
        "svm on mobilenetv2-224-avg", "logreg on mobilenetv2-224-avg", "finetune mobilenetv2"]
    by_name = {r["approach"]: r for r in records}
    for row in summary:
        record = by_name[row["Approach"]]
        stat = record["cv"]["summary"]
        mean, std = (float(x) for x in row["CV accuracy %"].split(" ± "))
        assert mean == pytest.approx(100 * stat["accuracy"]["mean"], abs=0.005)
        assert std == pytest.approx(100 * stat["accuracy"]["std"], abs=0.005)
        assert float(row["CV kappa"]) == pytest.approx(stat["kappa"]["mean"], abs=5e-4)
        assert float(row["CV top-5 %"]) == pytest.approx(100 * stat["top5_accuracy"]["mean"], abs=0.005)
        assert float(row["Fit s/fold"]) == pytest.approx(stat["fit_seconds"]["mean"], rel=5e-3)
        assert row["Kind"] == record["kind"]
    assert float(summary[0]["Test accuracy %"]) == 90.0
    assert summary[1]["Test accuracy %"] == "—"

    folds = markdown_table(markdown, "### Accuracy per fold")
    for row in folds:
        accuracies = [m["accuracy"] for m in by_name[row["Approach"]]["cv"]["fold_metrics"]]
        assert [float(row[f"Fold {i + 1}"]) for i in range(6)] == pytest.approx([100 * a for a in accuracies])
    assert "svm on mobilenetv2-224-avg" in result.text.splitlines()[3]


def test_html_is_self_contained(records, tmp_path):
    result = build_report(records, tmp_path, title="Pets")
    page = result.html.read_text(encoding="utf-8")
    images = re.findall(r'<img src="([^"]*)"', page)
    assert len(images) == 3 and all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r'(src|href)\s*=\s*["\']?\s*(https?:)?//', page, re.IGNORECASE)
    assert "<script" not in page and "<link" not in page and "<title>Pets</title>" in page
    pngs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", result.markdown.read_text(encoding="utf-8"))
    assert len(pngs) == 3 and all((tmp_path / name).read_bytes().startswith(b"\x89PNG") for name in pngs)


def test_corrected_resampled_ttest_by_hand():
    a = [0.90, 0.92, 0.88, 0.91, 0.93, 0.89]
    b = [0.85, 0.88, 0.86, 0.84, 0.90, 0.87]
    d = [x - y for x, y in zip(a, b)]  # 0.05, 0.04, 0.02, 0.07, 0.03, 0.02
    k = 6
    mean = sum(d) / k  # 0.23 / 6
    variance = sum((x - mean) ** 2 for x in d) / (k - 1)
    t = mean / math.sqrt((1 / k + 1 / (k - 1)) * variance)
    p = 2 * scipy_stats.t.sf(abs(t), k - 1)

    result = corrected_resampled_ttest(a, b)
    assert result.difference == pytest.approx(0.23 / 6)
    assert result.t == pytest.approx(t) and result.p == pytest.approx(p) and result.df == 5
    assert result.t == pytest.approx(3.2618, abs=1e-4)  # 0.038333 / sqrt((1/6 + 1/5) * 0.00037667)
    assert result.p == pytest.approx(0.0224, abs=1e-4)
    assert corrected_resampled_ttest(b, a).t == pytest.approx(-t)


def test_paired_table_in_report(records, tmp_path):
    markdown = build_report(records, tmp_path).markdown.read_text(encoding="utf-8")
    rows = {row["Approach"]: row for row in markdown_table(markdown, "### Paired comparison")}
    expected = corrected_resampled_ttest(SVM, LOGREG)
    row = rows["logreg on mobilenetv2-224-avg"]
    assert float(row["t"]) == pytest.approx(expected.t, abs=5e-4)
    assert float(row["p"]) == pytest.approx(expected.p, rel=1e-2)
    assert float(row["Best − this (pp)"]) == pytest.approx(100 * expected.difference, abs=0.005)
    assert row["Significant at 0.05"] == ("yes" if expected.p < 0.05 else "no")
    assert "svm on mobilenetv2-224-avg" not in rows


def test_zero_variance_ttest():
    assert corrected_resampled_ttest([0.9] * 5, [0.9] * 5).p == 1.0
    same_gain = corrected_resampled_ttest([0.9] * 5, [0.8] * 5)
    assert same_gain.t == math.inf and same_gain.p == 0.0


def test_incompatible_records_are_grouped_or_refused(tmp_path):
    pets = make_record("svm on a", SVM)
    other_folds = make_record("logreg on a", LOGREG[:5])
    other_seed = make_record("knn on a", SVM, seed=1)
    birds = make_record("svm on b", SVM, dataset="birds", fingerprint="fp-birds")
    mixed = [pets, other_folds, other_seed, birds]

    with pytest.raises(FeatcacheError, match=r"folds 5 vs 6.*fold seed 0 vs 1") as error:
        build_report(mixed, tmp_path, strict=True)
    assert "dataset birds@fp-birds vs pets@fp-pets" in str(error.value) and "\n" not in str(error.value)
    check_comparable([pets, make_record("logreg on a", LOGREG)])  # same folds: no error

    assert len(group_records(mixed)) == 4
    markdown = build_report(mixed, tmp_path).markdown.read_text(encoding="utf-8")
    sections = markdown.split("\n## ")[1:]
    assert len(sections) == 4
    for section in sections:
        assert len(markdown_table(section, "### Summary")) == 1


def test_empty_and_filtered_records(records):
    with pytest.raises(FeatcacheError, match="no result records: run `featcache fit` first"):
        build_report([], "unused")
    birds = make_record("svm on b", SVM, dataset="birds", fingerprint="fp-birds", backbone="resnet50")
    everything = records + [birds]
    assert select_records(everything, dataset="birds") == [birds]
    assert select_records(everything, dataset="fp-birds", backbone="resnet50") == [birds]
    assert len(select_records(everything, label_set="all")) == 4
    with pytest.raises(FeatcacheError, match="backbone: mobilenetv2, resnet50"):
        select_records(everything, backbone="vgg16")


def test_most_confused_pairs_by_name():
    matrix = [[10, 3, 0], [7, 12, 1], [0, 4, 9]]
    pairs = most_confused(matrix, CLASSES, top=3)
    assert [(p.true, p.predicted, p.count) for p in pairs] == [("dog", "cat", 7), ("fox", "dog", 4), ("cat", "dog", 3)]
    assert pairs[0].share == pytest.approx(7 / 20)
    assert len(most_confused(matrix, CLASSES)) == 4  # zero cells are left out


def test_confusion_section_names_pairs_and_source(records, tmp_path):
    markdown = build_report(records, tmp_path).markdown.read_text(encoding="utf-8")
    assert "From the test set." in markdown
    rows = markdown_table(markdown, "#### Most confused classes")
    assert (rows[0]["True class"], rows[0]["Predicted as"], rows[0]["Count"]) == ("dog", "cat", "5")

    cv_only = [make_record("svm on a", SVM, cv_matrix=[[20, 0, 0], [0, 18, 2], [1, 0, 19]])]
    markdown = build_report(cv_only, tmp_path).markdown.read_text(encoding="utf-8")
    assert "From the CV out-of-fold predictions." in markdown
    assert markdown_table(markdown, "#### Most confused")[0]["True class"] == "dog"


def test_rerun_approaches_keep_apart_by_record_id():
    first, rerun = make_record("svm on a", SVM), make_record("svm on a", LOGREG)
    rerun["id"] = "20261126-090000-svm-def456"
    assert [e.label for e in rank([first, rerun])] == [
        "svm on a [20261125-101500-svm-abc123]", "svm on a [20261126-090000-svm-def456]"]


def overlapping(texts) -> bool:
    boxes = [t.get_window_extent() for t in texts if t.get_text()]
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_plot_labels_do_not_overlap_with_many_long_names(monkeypatch):
    from featcache import report_plots as plots

    figures = []
    monkeypatch.setattr(plots, "_png", figures.append)
    labels = [f"{head} C={c} on mobilenetv2(alpha=0.35)-224-avg-float16 [2026112{c}-101500-{head}-abc123]"
              for head in ("svm", "logreg", "knn", "xgboost") for c in range(5)]
    n = len(labels)
    means, stds = np.linspace(0.7, 0.9, n), [0.01] * n
    plots.accuracy_plot(labels, means, stds, [None] * n)
    plots.accuracy_vs_time_plot(labels, np.geomspace(0.5, 50, n), np.full(n, 0.8) + np.arange(n) * 1e-4, stds)
    for fig in figures:
        fig.canvas.draw()
        for ax in fig.axes:
            assert not overlapping(ax.get_yticklabels()) and not overlapping(ax.get_xticklabels())
            assert not overlapping(ax.texts)
            width, height = fig.bbox.width, fig.bbox.height
            assert ax.bbox.width > 0.3 * width and ax.bbox.height > 0.2 * height  # the data keeps its room
            assert all(0 <= t.get_window_extent().x0 and t.get_window_extent().x1 <= width
                       for t in [*ax.get_yticklabels(), *ax.texts])


def test_one_precision_per_column(records, tmp_path):
    records[0]["cv"]["summary"]["fit_seconds"]["mean"] = 0.012
    markdown = build_report(records, tmp_path).markdown.read_text(encoding="utf-8")
    for heading in ("### Summary", "### Accuracy per fold", "### Paired comparison"):
        rows = markdown_table(markdown, heading)
        for column in rows[0]:
            decimals = {len(row[column].partition(".")[2]) for row in rows
                        if re.fullmatch(r"-?[\d.]+", row[column])}
            assert len(decimals) <= 1, (heading, column, [row[column] for row in rows])


def test_fit_and_report_print_the_same_cells(records, tmp_path, root):
    from click.testing import CliRunner

    from featcache import records as records_module
    from featcache.cli import main

    for record in records:
        records_module.save_record(record, root)
    listed = CliRunner().invoke(main, ["results", "ls"]).output
    reported = build_report(records, tmp_path).text
    for record in records:
        accuracy = record["cv"]["summary"]["accuracy"]
        cell = f"{100 * accuracy['mean']:.2f} ± {100 * accuracy['std']:.2f}"
        assert cell in listed and cell in reported
    headers = reported.splitlines()[1].split()
    assert listed.splitlines()[0].split()[:len(headers)] == headers


def test_approach_names_the_options_that_change_features():
    from featcache.records import backbone_label

    spec = {"name": "mobilenetv2", "options": {"alpha": 0.35}, "input_size": 224, "pooling": "avg",
            "weights": "imagenet", "seed": 0}
    assert backbone_label(spec) == "mobilenetv2(alpha=0.35)-224-avg"
    assert backbone_label({**spec, "weights": "none", "seed": 3}) == "mobilenetv2(alpha=0.35)-224-avg-random3"
    assert backbone_label({**spec, "weights": "/x/mine.h5"}) == "mobilenetv2(alpha=0.35)-224-avg-mine.h5"
