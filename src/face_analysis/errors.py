"""Errors with a machine-readable code: every failed image ends as one of these."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["EX_CONFIG", "AnalysisError", "ErrorCode", "ModelError", "SettingsError"]


class ErrorCode(StrEnum):
    """Why an image could not be analysed (the `error.code` of an error result)."""

    EMPTY_FILE = "empty_file"
    NOT_AN_IMAGE = "not_an_image"
    TRUNCATED_IMAGE = "truncated_image"
    FILE_TOO_LARGE = "file_too_large"
    TOO_MANY_PIXELS = "too_many_pixels"
    UNREADABLE_FILE = "unreadable_file"
    DETECTOR_FAILED = "detector_failed"
    DETECTOR_UNAVAILABLE = "detector_unavailable"  # a remote detector kept failing (network, 429, 5xx)
    DETECTOR_AUTH_FAILED = "detector_auth_failed"  # a remote detector refused the API key (401/403)
    INTERNAL_ERROR = "internal_error"


# Errors that depend on the file alone: analysing it again gives the same error until it changes.
FINAL_ERROR_CODES = frozenset(
    {
        ErrorCode.EMPTY_FILE,
        ErrorCode.NOT_AN_IMAGE,
        ErrorCode.TRUNCATED_IMAGE,
        ErrorCode.FILE_TOO_LARGE,
        ErrorCode.TOO_MANY_PIXELS,
    }
)


class AnalysisError(Exception):
    """One image could not be analysed; the batch goes on.

    >>> AnalysisError(ErrorCode.EMPTY_FILE, "the file is empty").code
    <ErrorCode.EMPTY_FILE: 'empty_file'>
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ModelError(RuntimeError):
    """A model file is missing or corrupt; the message says how to fix it."""


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the one-line message names the variable."""


# The exit status of a service that cannot start as configured (bad settings, missing or corrupt
# model files): sysexits.h's EX_CONFIG. Restarting it cannot help; `face-analysis stack` stops.
EX_CONFIG = 78
