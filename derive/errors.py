"""Error types raised for bad input.

Every error a user can provoke is a :class:`DeriveError`; the CLI prints its message on one line and exits
with the code the subclass declares. Anything else escaping is a bug.
"""

from __future__ import annotations


class DeriveError(Exception):
    """Base class of every user-facing error. ``exit_code`` is the CLI's exit status for it."""

    exit_code = 2


class SpecError(DeriveError):
    """A solver specification is invalid (unknown family, order out of range, bad option)."""


class ExpressionError(DeriveError):
    """A user-supplied expression cannot be parsed or uses something outside the whitelist."""


class AdmissibilityError(DeriveError):
    """A noise-scale function violates a condition the ER SDE needs (e.g. phi(s)/s decreasing)."""


class DerivationError(DeriveError):
    """A derived identity failed its check: the derivation is wrong and nothing is emitted."""

    exit_code = 3


class DriftError(DeriveError):
    """Checked-in generated files differ from what the derivation now produces (``--check``)."""

    exit_code = 1


class HandEditedError(DeriveError):
    """A generated file was edited by hand; regenerating would destroy the edit (use ``--force``)."""
