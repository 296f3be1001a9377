"""Files and directories holding D1 rows or sync state, readable by their owner only.

Copies of D1 and the shadow hold every row of the app (e-mail addresses, OAuth tokens, raw
session tokens in a copy), so they are created 0600, in directories this project creates 0700.
SQLite gives the files it creates beside a database (-wal, -shm, -journal) the mode of the
database file, so creating the database file first, 0600, keeps them private as well.
"""

import contextlib
import os
from pathlib import Path

SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def private_dir(path: Path) -> Path:
    """``path``, with every directory of it that is missing created 0700. Directories that
    exist already are left as they are: their mode is their owner's choice."""
    for directory in reversed([path, *path.parents]):
        if directory.exists():
            continue
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process
            directory.mkdir(mode=0o700)
            os.chmod(directory, 0o700)  # exactly: mkdir's mode is filtered by the umask
    return path


def private_file(path: Path) -> Path:
    """``path`` (created empty when missing, which SQLite opens as an empty database) and its
    SQLite side files, made 0600; files left wider by an earlier version are narrowed."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    for file in (path, *(path.with_name(path.name + side) for side in SQLITE_SIDE_FILES)):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(file, 0o600)
    return path
