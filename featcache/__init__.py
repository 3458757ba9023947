"""featcache: run a pretrained backbone once, cache its features, compare heads.

The data flows one way, one module per box:

    datasets -> backbones -> extract -> cache -> heads -> cv -> records -> report
"""

from featcache.errors import FeatcacheError

__all__ = ["FeatcacheError"]
__version__ = "0.1.0"
