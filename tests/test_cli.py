"""The command line: one-line errors (no tracebacks) and the extract / cache commands end to end."""

import pytest
from click.testing import CliRunner

from featcache.cli import main

SMALL = ["--backbone", "mobilenetv2", "--alpha", "0.35", "--input-size", "32", "--weights", "none"]


def run(*args):
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_extract_then_cache_commands(root):
    code, out = run("extract", "--dataset", "synthetic:n=20", *SMALL)
    assert code == 0 and "extracted 25 images" in out and "train 20 x 1280" in out
    code, out = run("extract", "--dataset", "synthetic:n=20", *SMALL)
    assert code == 0 and out.startswith("features are cached")
    code, out = run("cache", "ls")
    assert "synthetic-n20" in out and "complete" in out
    stem = next((root / "features").glob("*.h5")).stem
    code, out = run("cache", "info", stem[:16])
    assert code == 0 and '"input_size": 32' in out and "fine (4 classes)" in out
    assert run("cache", "verify") == (0, f"{stem}.h5: ok\n")
    code, out = run("cache", "rm", stem)
    assert code == 0 and not list((root / "features").glob("*.h5"))


@pytest.mark.parametrize("args, message", [
    (["extract", "--backbone", "resnet9000"], "unknown backbone 'resnet9000'"),
    (["extract", "--backbone", "resnet50", "--alpha", "0.5"], "backbone resnet50 has no option 'alpha'"),
    (["extract", "--input-size", "8", "--weights", "none"], "--input-size 8 must be an integer >= 32"),
    (["extract", "--weights", "/no/such/file.h5"], "must be imagenet, none, or the path of an existing weights file"),
    (["extract", "--alpha", "0.4"], "--alpha 0.4 must be one of 0.35, 0.5, 0.75, 1.0, 1.3, 1.4"),
    (["extract", "--dataset", "folder:/no/such/folder", "--weights", "none"], "does not exist"),
    (["extract", "--dataset", "synthetic", "--batch-size", "100", *SMALL],
     "--batch-size 100 must be a divisor of 1024 (e.g. 16, 32, 64, 128)"),
    (["cache", "info", "nothing-like-this"], "no cache matches"),
    (["fit", "--head", "logreg"], "no complete cache"),
    (["report"], "no result records"),
])
def test_bad_input_is_one_line_without_traceback(root, args, message):
    code, out = run(*args)
    assert code == 2, out
    assert out.startswith("error: ") and message in out and "Traceback" not in out
    assert len(out.strip().splitlines()) == 1
