"""The classical heads fitted on cached features: scikit-learn classifiers, looked up by name."""

from featcache.heads.registry import (available_heads, check_params, get_head_class, load_head, make_head, name_of,
                                      save_head)

__all__ = ["available_heads", "check_params", "get_head_class", "load_head", "make_head", "name_of", "save_head"]
