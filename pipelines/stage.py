"""What every stage entry point shares: a user error is one line on stderr and its exit code, like `lic`."""

from __future__ import annotations

import sys
from collections.abc import Callable

from lic.errors import LicError


def run(step: Callable[[], object]) -> None:
    try:
        step()
    except LicError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
