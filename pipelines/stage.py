"""What every stage entry point shares: params.yaml loaded and validated once, then the stage's one library
function, the same one its `lic` command calls; a user error is one line on stderr and its exit code, like `lic`."""

from __future__ import annotations

import sys
from collections.abc import Callable

from lic.errors import LicError
from lic.params import load_params


def run(stage: Callable[..., object], *args: str) -> None:
    """`stage(params, *args)`, where args are the stage's command-line words (a foreach key)."""
    try:
        stage(load_params(), *args)
    except LicError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
