"""featcache: run a pretrained backbone once, cache its features, compare heads.

The data flows one way, one module per box::

    datasets -> backbones -> extract -> cache -> heads -> cv -> records -> report
                                                     \\-> predict / export

Everything a notebook needs is one import away, loaded on first use (so ``import featcache``
imports no TensorFlow)::

    import featcache
    data = featcache.load_dataset("folder:~/photos")
    spec = featcache.make_spec("mobilenetv2", input_size=224, options={"alpha": 0.35})
    cached = featcache.extract_features(data, spec)
    features = featcache.load_features(featcache.open_cache(cached.path))
    records = featcache.fit_heads({"logreg": featcache.make_head("logreg")}, features, folds=6)
    featcache.build_report(records, "reports/")
    model = featcache.load_model("my-model")   # a folder written by `featcache export`
"""

from importlib import import_module

from featcache._version import __version__
from featcache.errors import FeatcacheError, ParameterError

_API = {  # public name -> (module, attribute)
    "load_dataset": ("featcache.datasets", "load_dataset"),
    "make_spec": ("featcache.backbones", "make_spec"),
    "BackboneSpec": ("featcache.backbones", "BackboneSpec"),
    "extract_features": ("featcache.extract", "extract"),
    "open_cache": ("featcache.cache", "open_cache"),
    "FeatureCache": ("featcache.cache", "FeatureCache"),
    "load_features": ("featcache.cv", "load_features"),
    "make_head": ("featcache.heads", "make_head"),
    "fit_heads": ("featcache.cv", "fit_heads"),
    "list_records": ("featcache.records", "list_records"),
    "load_record": ("featcache.records", "load_record"),
    "build_report": ("featcache.report", "build_report"),
    "load_model": ("featcache.export", "load_model"),
}

__all__ = ["FeatcacheError", "ParameterError", "__version__", *_API]


def __getattr__(name):
    if name not in _API:
        raise AttributeError(f"module 'featcache' has no attribute {name!r}")
    module, attribute = _API[name]
    return getattr(import_module(module), attribute)


def __dir__():
    return sorted(__all__)
