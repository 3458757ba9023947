"""Where featcache keeps its files: one root, overridable by FEATCACHE_CACHE or --cache-dir.

    <root>/features/   one HDF5 file per extraction (and its in-progress folder)
    <root>/results/    one folder per fit/finetune/scratch run: record.json + saved model
    <root>/reports/    the Markdown and HTML comparison reports
    <root>/file-index.json   content hashes of image and weights files by their stat (featcache.file_index)
"""

import os
from pathlib import Path

DEFAULT_ROOT = Path("cache")


def cache_root(override=None) -> Path:
    """The root folder: the explicit override, else $FEATCACHE_CACHE, else ./cache."""
    root = override or os.environ.get("FEATCACHE_CACHE") or DEFAULT_ROOT
    return Path(root).expanduser()


def features_dir(root=None) -> Path:
    return cache_root(root) / "features"


def results_dir(root=None) -> Path:
    return cache_root(root) / "results"


def reports_dir(root=None) -> Path:
    return cache_root(root) / "reports"
