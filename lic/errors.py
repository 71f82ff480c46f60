"""The project's own error types: the CLI turns them into one-line messages instead of tracebacks.

Each carries the exit code the `lic` command ends with (README, "Exit codes"): 1 when a command could not do its
job, 2 for a usage error (what click reports for bad arguments too), 3 when a batch was only partly done.
"""

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3


class LicError(Exception):
    """A user-facing error: bad input, a missing file, an unknown model. Printed without a traceback."""

    exit_code = EXIT_FAILURE


class UsageError(LicError):
    """Options that contradict each other or do not fit the inputs: nothing was attempted."""

    exit_code = EXIT_USAGE


class PartialFailureError(LicError):
    """Some inputs of a batch failed (each reported on its own line); the others were written."""

    exit_code = EXIT_PARTIAL


class BitstreamError(LicError):
    """A .lic stream that cannot be decoded: truncated, corrupted, or made by another model."""
