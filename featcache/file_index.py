"""A stat index of files, as git keeps one: a file whose size, mtime, ctime and inode are unchanged keeps
its content hash, so a folder of unchanged files is fingerprinted without reading them.

Any write to a file sets its ctime (the kernel does; no tool can set it back), so a change that keeps
the size and the mtime is still seen. The index is only a cache: an unreadable one is rebuilt, and
one that cannot be written (a read-only cache root) is not kept.
"""

import contextlib
import hashlib
import json
import os
from pathlib import Path

from featcache import paths
from featcache.files import file_hash, write_json

INDEX_FILE = "file-index.json"


def _stat(path: Path) -> list:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


class FileIndex:
    """{absolute path: stat and content hashes} in ``<cache root>/file-index.json``."""

    _open = {}  # index file -> FileIndex: one per process, so that every image source adds to the same

    @classmethod
    def shared(cls, root=None) -> "FileIndex":
        path = paths.cache_root(root) / INDEX_FILE
        if path not in cls._open:
            cls._open[path] = cls(root)
        return cls._open[path]

    def __init__(self, root=None):
        self.path = paths.cache_root(root) / INDEX_FILE
        try:
            self.entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}
        self.changed = False

    def digest(self, path, algorithm: str = "blake2b") -> str:
        """The file's content hash: from the index when its stat is unchanged, else read and remembered."""
        known = self.known(path, algorithm)
        if known is None:
            stat = _stat(path)
            known = file_hash(path, algorithm)
            self._remember(path, stat, algorithm, known)
        return known

    def known(self, path, algorithm: str = "blake2b") -> str | None:
        """The file's content hash if the index has it for the file as it is now; None otherwise."""
        entry = self.entries.get(os.path.abspath(path))
        return entry.get(algorithm) if entry and entry["stat"] == _stat(path) else None

    @contextlib.contextmanager
    def reading(self, path):
        """Yield the file's bytes, and remember their blake2b hash: a decoder hashes what it reads."""
        stat, data = _stat(path), Path(path).read_bytes()
        yield data
        if self.known(path) is None:
            self._remember(path, stat, "blake2b", hashlib.blake2b(data, digest_size=16).hexdigest())

    def stat_text(self, path) -> str:
        return " ".join(map(str, _stat(path)))

    def _remember(self, path, stat: list, algorithm: str, digest: str) -> None:
        name = os.path.abspath(path)
        entry = self.entries.get(name)
        if entry is None or entry["stat"] != stat:
            entry = self.entries[name] = {"stat": stat}
        entry[algorithm] = digest
        self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.path, self.entries)
        except OSError:
            pass  # a read-only root: the next run hashes again
        self.changed = False
