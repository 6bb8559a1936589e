"""What a bridge wrote, as others may see it."""

import stat
from pathlib import Path


def exposed(root: Path) -> list[str]:
    """Files and directories under `root` that anyone but their owner may open."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode) and mode & 0o077:
            found.append(f"{path.relative_to(root)} {stat.filemode(mode)}")
    return found
