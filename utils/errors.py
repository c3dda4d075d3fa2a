"""User-facing errors: one line that names the file and the problem, non-zero exit."""
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

__all__ = ["PSSRError", "fail", "warn_skip", "run_cli"]


class PSSRError(Exception):
    """A problem with the user's input or options, reported as one line (no traceback)."""


def fail(path: Any, problem: str) -> None:
    """Raise a `PSSRError` that names `path` (None for an option problem)."""
    raise PSSRError(f"{path}: {problem}" if path is not None else problem)


def warn_skip(path: Any, problem: str) -> None:
    """One bad file among many: warn on one line and let the caller skip and count it."""
    print(f"warning: skipping {path}: {problem}", file=sys.stderr)


def run_cli(component: Callable) -> None:
    """`fire.Fire(component)` with `PSSRError` turned into `error: ...` and exit status 2."""
    import fire
    try:
        fire.Fire(component)
    except PSSRError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
