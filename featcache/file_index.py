"""A stat index of files, as git keeps one: a file whose size, mtime, ctime and inode are unchanged keeps
its content hash, so a folder of unchanged files is fingerprinted without reading them.

Any write to a file sets its ctime (the kernel does; no tool can set it back), so a change that keeps
the size and the mtime is still seen. The index is only a cache: an unreadable one is rebuilt, and
one that cannot be written (a read-only cache root) is not kept.
"""

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

    def __init__(self, root=None):
        self.path = paths.cache_root(root) / INDEX_FILE
        try:
            self.entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}
        self.changed = False

    def digest(self, path, algorithm: str = "blake2b") -> str:
        """The file's content hash: from the index when its stat is unchanged, else read and remembered."""
        name, stat = str(Path(path).resolve()), _stat(path)
        entry = self.entries.get(name)
        if entry is None or entry["stat"] != stat:
            entry = self.entries[name] = {"stat": stat}
        if algorithm not in entry:
            entry[algorithm] = file_hash(path, algorithm)
            self.changed = True
        return entry[algorithm]

    def save(self) -> None:
        if not self.changed:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.path, self.entries)
        except OSError:
            pass  # a read-only root: the next run hashes again
        self.changed = False
