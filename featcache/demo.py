"""``featcache demo``: the whole job end to end on scikit-learn's bundled 8x8 digits, in about a minute.

Extracts ImageNet MobileNetV2 (alpha 0.35) features at 96 px, fits every built-in head in 6-fold
CV plus the test split, and writes the report: about 93% accuracy for the linear heads. Where the
ImageNet weights cannot be downloaded, it says so in one line and runs on random weights at 32 px
instead (about 83%: the pipeline is the same, the features are not pretrained).
"""

from featcache import heads, paths
from featcache.backbones import make_spec
from featcache.cache import FeatureCache
from featcache.cv import fit_heads, load_features
from featcache.datasets import load_dataset
from featcache.errors import WeightsUnavailable
from featcache.extract import extract
from featcache.report import build_report

PRETRAINED = dict(name="mobilenetv2", input_size=96, weights="imagenet", options={"alpha": 0.35})
RANDOM = dict(name="mobilenetv2", input_size=32, weights="none", options={"alpha": 0.35})
FOLDS = 6


def run_demo(root=None, say=print, progress: bool = True):
    """Extract, fit every built-in head, report; return (the extraction, the records, the report)."""
    data = load_dataset("digits")
    try:
        extracted = extract(data, make_spec(**PRETRAINED), root, progress=progress)
    except WeightsUnavailable:
        say("demo: the ImageNet weights cannot be downloaded here, so the demo runs on random weights at 32 px "
            "(the same pipeline; features that are not pretrained score lower)")
        extracted = extract(data, make_spec(**RANDOM), root, progress=progress)
    features = load_features(FeatureCache(extracted.path))
    estimators = {name: heads.make_head(name) for name in heads.registry.BUILT_IN}
    records = fit_heads(estimators, features, folds=FOLDS, test=True, root=root, progress=progress)
    report = build_report(records, paths.reports_dir(root))
    return extracted, records, report
