"""A small on-disk cache for the costly, pure part of a derivation.

The 30-digit reference values that size a quadrature rule (decimal strings, a function of the integrands,
the sampled steps, the reference rule and the mpmath version only). A cached value only saves time: it is the
same value a cold run computes, so the generated text never depends on the cache.

Values are plain JSON strings and lists, never code: a cache file is parsed, not evaluated. Every key is
the SHA-256 of everything the value depends on, so a stale entry cannot be hit; each entry carries the
SHA-256 of its value, checked on every read; entries are written to a temporary file and renamed.
Location: ``$DERIVE_CACHE_DIR``, else ``$XDG_CACHE_HOME/derive``, else ``~/.cache/derive``;
``DERIVE_CACHE_DIR=off`` disables it. An unwritable location only costs time.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import warnings

from derive.files import atomic_write, remove_stale_temporaries

FORMAT = "derive-cache-2"


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


def _checksum(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def load(namespace: str, parts: tuple[str, ...]):
    """The cached JSON value, or None. Missing, unreadable or malformed entries are misses; an entry whose
    checksum does not match its value (edited or damaged on disk) is a miss with a warning, and the caller's
    recomputed value replaces it."""
    path = _path(namespace, parts)
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            entry = json.load(handle)
    except (OSError, ValueError):
        return None
    if not (isinstance(entry, dict) and entry.get("format") == FORMAT and "value" in entry):
        return None
    if entry.get("sha256") != _checksum(entry["value"]):
        warnings.warn(f"derive: the cache entry {path} failed its checksum; it is recomputed", stacklevel=2)
        return None
    return entry["value"]


def store(namespace: str, parts: tuple[str, ...], value) -> None:
    """Write ``value`` with its checksum (atomically; temporaries of killed runs are removed first)."""
    path = _path(namespace, parts)
    if path is None:
        return
    try:
        remove_stale_temporaries(path.parent)
        atomic_write(path, json.dumps({"format": FORMAT, "sha256": _checksum(value), "value": value}))
    except OSError:
        pass
