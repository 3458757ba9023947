"""Heads by name: the built-in ones, and third-party heads from the ``featcache.heads`` entry points.

A plug-in package declares, in its own metadata::

    [options.entry_points]
    featcache.heads =
        myhead = mypackage.module:MyHead

``MyHead`` must be a scikit-learn classifier (``fit``, ``predict``, ``get_params``, and
``predict_proba`` or ``decision_function``); its constructor's defaults are its parameters. A
``parameter_rules`` class attribute (as on the built-in heads, see :mod:`featcache.params`) makes
:func:`make_head` check the values it is given.
"""

from importlib.metadata import entry_points
from pathlib import Path

import joblib

from featcache.errors import FeatcacheError
from featcache.heads import base
from featcache.heads.knn import KNNHead
from featcache.heads.logreg import LogisticRegressionHead
from featcache.heads.mlp import MLPHead
from featcache.heads.svm import SVMHead
from featcache.heads.xgb import XGBoostHead

BUILT_IN = {head.name: head for head in (MLPHead, SVMHead, LogisticRegressionHead, XGBoostHead, KNNHead)}
ENTRY_POINT_GROUP = "featcache.heads"


def _plugged_in() -> dict:
    """Read on every call, so a package installed while Python runs is seen."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in BUILT_IN}


def available_heads() -> list[str]:
    return list(BUILT_IN) + sorted(_plugged_in())


def get_head_class(name: str):
    if name in BUILT_IN:
        return BUILT_IN[name]
    plugged = _plugged_in()
    if name not in plugged:
        raise FeatcacheError(f"unknown head {name!r}: choose one of {', '.join(available_heads())}")
    try:
        head_class = plugged[name].load()
    except Exception as error:
        raise FeatcacheError(f"the plugged-in head {name!r} ({plugged[name].value}) failed to load: {error}")
    missing = [m for m in ("fit", "predict", "get_params") if not hasattr(head_class, m)]
    if missing:
        raise FeatcacheError(f"the plugged-in head {name!r} is not a scikit-learn classifier: no {', '.join(missing)}")
    return head_class


def name_of(head) -> str:
    """The name ``head``'s class is registered under (built in or plugged in), else the class name."""
    head_class = type(head)
    names = {registered: name for name, registered in BUILT_IN.items()}
    plugged = (name for name, ep in _plugged_in().items()
               if (ep.module, ep.attr) == (head_class.__module__, head_class.__qualname__))
    return names.get(head_class) or next(plugged, head_class.__name__)


def check_params(head) -> None:
    """Raise a ParameterError naming the head and the first parameter that breaks its ``parameter_rules``."""
    base.check_params(head, name_of(head))


def make_head(name: str, **params):
    """A new head with these parameters, checked: an unknown name or a bad value is a FeatcacheError
    (a bad value: a ParameterError)."""
    head_class = get_head_class(name)
    known = head_class().get_params(deep=False)
    unknown = [p for p in params if p not in known]
    if unknown:
        raise FeatcacheError(f"head {name!r} has no parameter {unknown[0]!r}: it takes {', '.join(known)}")
    head = head_class(**params)
    base.check_params(head, name)
    return head


def save_head(head, folder) -> str:
    """Write a fitted head into ``folder``; return its file name (relative to the folder)."""
    if hasattr(head, "save"):
        return head.save(Path(folder))
    joblib.dump(head, Path(folder) / "head.joblib")
    return "head.joblib"


def load_head(path):
    """A head written by :func:`save_head`, from the path of its file."""
    path = Path(path)
    if not path.is_file():
        raise FeatcacheError(f"the saved head {path} is missing: fit it again")
    if path.suffix == ".keras":
        return MLPHead.load(path)
    return joblib.load(path)
