"""Errors raised by calib.

Every error a user can cause is a :class:`CalibError` whose message is one actionable line:
what is wrong, with which file or name, and what to do about it. The CLI prints it without a
traceback and exits 2; the app shows it as a message.
"""

from __future__ import annotations

from collections.abc import Collection


class CalibError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class InputError(CalibError, ValueError):
    """Bad input: a missing or corrupt file, an unknown column, an impossible request."""


class ModelMismatchError(InputError):
    """Two artifacts refer to different models (their sha256 differ)."""


class BackendUnavailableError(CalibError, RuntimeError):
    """A requested backend (e.g. TensorRT) is not installed or has no GPU here."""


class WorkspaceError(CalibError, OSError):
    """The workspace cannot be used (not writable, corrupt registry, unknown run)."""


class RunCancelled(CalibError):
    """A run stopped because someone asked it to (raised from its progress callback, so the stage
    stops at its next progress report and its unfinished files are removed like any failed run's)."""


def check_choice(value: object, choices: Collection[object], what: str) -> None:
    """Raise a one-line :class:`InputError` unless ``value`` is one of ``choices``
    ("unknown placement preset 'x' (choose from tensorrt, all)")."""
    if value not in choices:
        raise InputError(f"unknown {what} {value!r} (choose from {', '.join(map(str, choices))})")
