"""featcache: run a pretrained backbone once, cache its features, compare heads.

The data flows one way, one module per box:

    datasets -> backbones -> extract -> cache -> heads -> cv -> records -> report
"""

from featcache.errors import FeatcacheError


def load_model(folder):
    """Load a model folder written by `featcache export` (see :mod:`featcache.export`)."""
    from featcache.export import load_model as load

    return load(folder)


__all__ = ["FeatcacheError", "load_model"]
__version__ = "0.1.0"
