"""File helpers every stage shares: atomic writes and content hashes."""

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; it replaces ``path`` only when the block succeeds.

    A process killed inside the block leaves ``path`` as it was (and at worst a ``*.tmp`` file).
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomically(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def write_json(path, value, default=None) -> None:
    write_atomically(path, json.dumps(value, indent=2, default=default).encode())


def file_hash(path, algorithm: str = "sha256") -> str:
    """The hex digest of a file's contents, read in 1 MiB blocks (blake2b: 16 bytes)."""
    digest = hashlib.blake2b(digest_size=16) if algorithm == "blake2b" else hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def lock_held(lock_file) -> bool:
    """Whether a live process holds an flock on ``lock_file`` (the kernel drops one when its process dies,
    even by SIGKILL); opened for reading, so it works on a read-only folder."""
    try:
        handle = open(lock_file)
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False
