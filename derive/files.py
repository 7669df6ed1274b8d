"""Writing files: atomically, with the permissions an ordinary file gets under the user's umask, under a
folder lock, and without leaving temporaries behind."""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import stat
import tempfile

#: a temporary file of ``atomic_write``: ``.NAME.PID.RANDOM.tmp`` (the pid says whether its writer still runs)
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.tmp$")


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
    The temporary's name carries the writer's pid, so a later run can tell one left by a killed process
    (:func:`remove_stale_temporaries`) from one another process is still writing.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = _default_mode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists (another account's), or we cannot tell: leave its file alone
    return True


def remove_stale_temporaries(folder: pathlib.Path) -> list[pathlib.Path]:
    """Delete the temporaries of ``atomic_write`` in ``folder`` whose writer no longer runs (killed between
    writing and renaming); returns them. Temporaries of running writers are left alone."""
    removed = []
    try:
        entries = list(pathlib.Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match and not _running(int(match["pid"])):
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed


@contextlib.contextmanager
def folder_lock(folder: pathlib.Path):
    """An exclusive lock on ``folder`` for a read-modify-write of a file in it (the manifest), so concurrent
    writers into one folder serialize instead of losing each other's updates. POSIX ``flock`` on the folder
    itself (no lock file is left behind); where it is unavailable the block runs unlocked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
