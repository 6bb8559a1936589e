"""Durable file writes, the one way the bridge puts state on disk."""

import os
import uuid
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> None:
    """Write, fsync, rename, fsync the directory: after a crash the file is old or new,
    never half written. The temporary name is unique, so concurrent writers do not collide.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with temporary.open("wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    sync_directory(path.parent)


def move_durably(source: Path, target: Path) -> None:
    """Move a fully written file into place: fsync it, rename, fsync the directory."""
    with source.open("rb") as file:
        os.fsync(file.fileno())
    os.replace(source, target)
    sync_directory(target.parent)


def sync_directory(path: Path) -> None:
    """fsync a directory, so that names created, renamed or removed in it are durable."""
    directory = os.open(path, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner may read (0600), whatever the umask: keys, passwords."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        os.fchmod(file.fileno(), 0o600)  # an older file may have had another mode
        file.write(data)
