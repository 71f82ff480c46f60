"""The project's own error types: the CLI turns them into one-line messages instead of tracebacks."""


class LicError(Exception):
    """A user-facing error: bad input, a missing file, an unknown model. Printed without a traceback."""


class BitstreamError(LicError):
    """A .lic stream that cannot be decoded: truncated, corrupted, or made by another model."""
