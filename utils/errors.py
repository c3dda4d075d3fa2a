"""User-facing errors: one line that names the file and the problem, non-zero exit."""
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

from . import dist

__all__ = ["PSSRError", "fail", "warn", "warn_skip", "run_cli", "check_interrupted"]


class PSSRError(Exception):
    """A problem with the user's input or options, reported as one line (no traceback)."""


def fail(path: Any, problem: str) -> None:
    """Raise a `PSSRError` that names `path` (None for an option problem)."""
    raise PSSRError(f"{path}: {problem}" if path is not None else problem)


def warn(path: Any, problem: str) -> None:
    """Something the user should know, on one line; the work goes on."""
    print(f"warning: {path}: {problem}", file=sys.stderr)


def warn_skip(path: Any, problem: str) -> None:
    """One bad file among many: warn on one line and let the caller skip and count it."""
    print(f"warning: skipping {path}: {problem}", file=sys.stderr)


def bool_flags_take_no_value(component: Callable, argv: list) -> list:
    """`--force src/fixed` must not make 'src/fixed' the value of --force (fire would, silently dropping a
    source): a boolean option given without `=` is set to True unless the next word is true/false."""
    import inspect
    bools = {n for n, p in inspect.signature(component).parameters.items() if isinstance(p.default, bool)}
    out = []
    for i, a in enumerate(argv):
        name = a[2:].replace("-", "_")
        nxt = argv[i + 1].lower() if i + 1 < len(argv) else ""
        if a.startswith("--") and "=" not in a and name in bools and nxt not in ("true", "false"):
            a += "=True"
        out.append(a)
    return out


_interrupted = False


def _interrupt(signum: int, frame: Any) -> None:
    """Ctrl-C as Python's own handler (KeyboardInterrupt), remembered: raised while a finalizer runs (`__del__`,
    a weakref callback, the garbage collector), the interpreter prints and drops it and the run goes on (a test
    saw `tile_from_info.py` still writing tiles 60 s after Ctrl-C); `check_interrupted` raises it again."""
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def check_interrupted() -> None:
    """Raise KeyboardInterrupt once Ctrl-C has come, even if it was swallowed; long loops call it per item."""
    if _interrupted:
        raise KeyboardInterrupt


def _exit_interrupted() -> None:
    print("error: interrupted; the files already written are complete (steps 2-4 continue with --resume)",
          file=sys.stderr)
    sys.exit(130)


def run_cli(component: Callable) -> None:
    """`fire.Fire(component)` with `PSSRError` turned into `error: ...` and exit status 2, Ctrl-C into one line
    and status 130 (every file is written under a temporary name first, so nothing half-written remains)."""
    import fire
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where Ctrl-C is ignored on purpose
        signal.signal(signal.SIGINT, _interrupt)
    try:
        fire.Fire(component, command=bool_flags_take_no_value(component, sys.argv[1:]))
    except PSSRError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        _exit_interrupted()
    except Exception:
        if not _interrupted:
            raise
        _exit_interrupted()  # a cleanup that Ctrl-C cut short raised something else while unwinding: still Ctrl-C
    if dist.launched():
        _leave_launched()


def _leave_launched() -> None:
    """End a rank that finished its work without the interpreter's teardown. There, the communication threads'
    destructors abort a rank now and then ("terminate called without an active exception", SIGABRT), and the
    launcher then kills the other ranks and reports a failure: 1 run in ~30 of a two-process image_gen.py here,
    with the process group destroyed. Every output file is closed by now; only the streams need flushing."""
    dist.finish()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
