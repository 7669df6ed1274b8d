"""A small on-disk cache for the costly, pure part of a derivation.

The 30-digit reference values that size a quadrature rule (decimal strings, a function of the integrands,
the sampled steps, the reference rule and the mpmath version only). A cached value only saves time: it is the
same value a cold run computes, so the generated text never depends on the cache.

Values are plain JSON strings and lists, never code: a cache file is parsed, not evaluated. Every key is
the SHA-256 of everything the value depends on, so a stale entry cannot be hit; entries are written to a
temporary file and renamed. Location: ``$DERIVE_CACHE_DIR``, else ``$XDG_CACHE_HOME/derive``, else
``~/.cache/derive``; ``DERIVE_CACHE_DIR=off`` disables it. An unwritable location only costs time.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import tempfile

FORMAT = "derive-cache-1"


def directory() -> pathlib.Path | None:
    configured = os.environ.get("DERIVE_CACHE_DIR")
    if configured is not None:
        return None if configured.strip().lower() in ("", "off", "0", "none") else pathlib.Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "derive"


def _path(namespace: str, parts: tuple[str, ...]) -> pathlib.Path | None:
    root = directory()
    if root is None:
        return None
    digest = hashlib.sha256("\0".join((FORMAT, namespace, *parts)).encode()).hexdigest()
    return root / namespace / f"{digest}.json"


def load(namespace: str, parts: tuple[str, ...]):
    """The cached JSON value, or None (missing, unreadable or malformed entries are misses)."""
    path = _path(namespace, parts)
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def store(namespace: str, parts: tuple[str, ...], value) -> None:
    path = _path(namespace, parts)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(value, handle)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass
