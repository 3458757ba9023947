"""Format versions of the files featcache writes (caches, records, exports).

A file carries ``"<name>/<version>"``. A reader accepts the current version and the one before it
(which its module migrates), or older ones where its module migrates them too (records), and says
clearly when a file is newer than this library.
"""

from featcache.errors import FeatcacheError


def version_of(text, name: str, where) -> int:
    """The version number of a ``name/N`` format string; a FeatcacheError for anything else."""
    prefix, _, number = str(text).partition("/")
    if prefix != name or not number.isdigit():
        raise FeatcacheError(f"{where} is not a {name} file (format {text!r})")
    return int(number)


def check_version(text, name: str, current: int, where, oldest: int | None = None) -> int:
    """The file's version when this library reads it (``oldest``, by default current - 1, up to current); else
    a clear error."""
    version = version_of(text, name, where)
    if version > current:
        raise FeatcacheError(f"{where} was written by a newer featcache ({name}/{version}; this one reads "
                             f"up to /{current}): upgrade featcache with `pip install -U featcache`")
    if version < (current - 1 if oldest is None else oldest):
        raise FeatcacheError(f"{where} is in an old format ({name}/{version}) this featcache no longer reads: "
                             "make it again")
    return version
