"""Errors raised by calib.

Every error a user can cause is a :class:`CalibError` whose message is one actionable line:
what is wrong, with which file or name, and what to do about it. The CLI prints it without a
traceback and exits 2; the app shows it as a message.
"""

from __future__ import annotations


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
