"""Writing files: atomically, with the permissions an ordinary file gets under the user's umask."""

from __future__ import annotations

import os
import pathlib
import stat
import tempfile


def _default_mode() -> int:
    """0o666 less the process umask (read without changing it where the platform allows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # the portable way: set and restore
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: pathlib.Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename it over the target.

    The file gets the mode a plain ``open(path, "w")`` would give it: an existing file keeps its mode, a new
    one gets 0o666 less the umask (``mkstemp`` alone would create it 0o600, unreadable by other accounts).
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = _default_mode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
