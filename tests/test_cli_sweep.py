"""Every command with bad values for its options: exit != 0, a last stderr line `error: ...`, no traceback,
and every file already in the cache byte-identical afterwards."""

import hashlib

import pytest
from click.testing import CliRunner

from featcache.cli import main

SMALL = ["--backbone", "mobilenetv2", "--alpha", "0.35", "--input-size", "32", "--weights", "none"]
DATA = ["--dataset", "synthetic:n=16"]


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    """A cache root holding one finished extraction and one fitted head, and an image to predict."""
    root = tmp_path_factory.mktemp("sweep") / "cache"
    runner = CliRunner()
    for args in (["extract", "--dataset", "synthetic:n=24", *SMALL], ["fit", "--head", "logreg", "--folds", "2"]):
        result = runner.invoke(main, ["--cache-dir", str(root), *args])
        assert result.exit_code == 0, result.output
    return root


def snapshot(root):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


BAD = [
    # extract
    ["extract", "--dataset", "nosuch"], ["extract", "--dataset", "folder:/no/such/folder"],
    ["extract", "--dataset", "synthetic:n=abc"], ["extract", "--data-dir", "/no/such/dir"],
    ["extract", "--backbone", "nosuch"], ["extract", "--weights", "/no/such.h5"],
    ["extract", *DATA, *SMALL, "--input-size", "0"], ["extract", *DATA, *SMALL, "--input-size", "-5"],
    ["extract", "--input-size", "abc"], ["extract", "--pooling", "median"], ["extract", *DATA, "--alpha", "0"],
    ["extract", *DATA, "--alpha", "-1"], ["extract", *DATA, "--alpha", "0.4"],
    ["extract", *DATA, "--backbone-option", "alpha"], ["extract", *DATA, "--backbone-option", "nosuch=1"],
    ["extract", *DATA, *SMALL, "--batch-size", "0"], ["extract", *DATA, *SMALL, "--batch-size", "-4"],
    ["extract", *DATA, *SMALL, "--batch-size", "100"], ["extract", "--dtype", "float64"],
    # cache
    ["cache", "info", "nosuch"], ["cache", "verify", "nosuch"], ["cache", "rm", "nosuch"], ["cache", "rm"],
    ["cache", "nosuch"],
    # fit
    ["fit", "--head", "nosuch"], ["fit", "--folds", "0"], ["fit", "--folds", "1"], ["fit", "--folds", "999"],
    ["fit", "--folds", "x"], ["fit", "--label", "nosuch"], ["fit", "--cache", "nosuch"],
    ["fit", "--backbone", "nosuch"], ["fit", "--dataset", "nosuch"], ["fit", "--param", "C"],
    ["fit", "--param", "C=-1"], ["fit", "--param", "nosuch=1"], ["fit", "--grid", "C="],
    ["fit", "--grid", "C=1,-1"], ["fit", "--jobs", "0"], ["fit", "--jobs", "-5"],
    # finetune (all refused before any training)
    ["finetune", *DATA, "--backbone", "nosuch"], *(["finetune", *DATA, *SMALL, flag, value] for flag, value in [
        ("--unfreeze", "-1"), ("--epochs", "0"), ("--finetune-epochs", "-1"), ("--lr", "0"),
        ("--finetune-lr", "-1"), ("--batch-size", "0"), ("--folds", "1"), ("--val-split", "1.5"),
        ("--patience", "-1"), ("--init-head", "nosuch"), ("--dataset", "nosuch"), ("--label", "nosuch")]),
    # scratch
    *(["scratch", *DATA, flag, value] for flag, value in [
        ("--model", "nosuch"), ("--depth", "11"), ("--width", "0"), ("--dropout", "2"), ("--epochs", "0"),
        ("--batch-size", "0"), ("--lr", "0"), ("--input-size", "0"), ("--folds", "1"), ("--val-split", "-0.1"),
        ("--patience", "-2")]),
    ["scratch", "--dataset", "digits"],
    # results, report
    ["results", "nosuch"], ["report", "nosuch-record"], ["report", "--dataset", "nosuch"],
    # predict
    ["predict", "--result", "nosuch", "x.png"], ["predict"], ["predict", "/no/such/image.png"],
    ["predict", "--top-k", "0", "/no/such/image.png"], ["predict", "--batch-size", "0", "/no/such/image.png"],
    ["predict", "--batch-size", "-4", "/no/such/image.png"],
    # export
    ["export", "--result", "nosuch", "--out", "somewhere"], ["export"],
]


@pytest.mark.parametrize("args", BAD, ids=[" ".join(a) for a in BAD])
def test_bad_input_ends_in_one_error_line_and_changes_nothing(filled, args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = snapshot(filled)
    result = CliRunner().invoke(main, ["--cache-dir", str(filled), *args])
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert all(line.startswith(("error: ", "Usage: ", "Try ")) for line in lines), result.stderr
    assert snapshot(filled) == before
