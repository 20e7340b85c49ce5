"""Shared helpers for commands: errors, JSON output, byte sizes, and a quiet TensorFlow.

Errors: every command's failure prints one line `error: MESSAGE` on stderr and exits 1 (2 for a
usage error). When the command line has --json, the failure is JSON instead, on stdout where the
result would have been: {"error": {"type": "InvalidImage", "message": "...", "file": "..."}}
("file" only when the error names one), so a script reading --json output always gets JSON.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.machinery
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

# Python modules whose warnings and log records are TensorFlow's start-up chatter, not ours.
NOISY_MODULES = r"(tensorflow|keras|absl|tf_keras|h5py|ml_dtypes)(\.|$)"


class _Settings:
    """What the command group's global options chose for this run (set by main.cli)."""

    verbose = False


settings = _Settings()


def set_verbose(verbose: bool) -> None:
    """--verbose: let TensorFlow's start-up output and library warnings through."""
    settings.verbose = bool(verbose)


# -- quiet TensorFlow ------------------------------------------------------------------------------


@contextlib.contextmanager
def stderr_muted() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the block, then restore it.

    TensorFlow's C++ code writes some lines (absl's "before InitializeLog" warning, the CUDA
    probe) straight to the descriptor, regardless of TF_CPP_MIN_LOG_LEVEL, so redirecting
    sys.stderr is not enough.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 at all (a detached service): nothing to mute
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


class _MutedLoader(importlib.abc.Loader):
    """Executes the real loader of `tensorflow` with stderr muted, then probes the devices."""

    def __init__(self, inner: importlib.abc.Loader):
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with stderr_muted():
            self.inner.exec_module(module)
            # The CUDA probe ("failed call to cuInit", "Could not find cuda drivers") runs at the
            # first device query: do it now, muted, rather than in the middle of a command.
            with contextlib.suppress(Exception):  # a probe only: the command reports real failures
                module.config.list_physical_devices()
        logging.getLogger("tensorflow").setLevel(logging.ERROR)

    def __getattr__(self, name: str) -> Any:  # resource readers and the like: the real loader's
        return getattr(self.inner, name)


class _MuteTensorFlowImport(importlib.abc.MetaPathFinder):
    """On the first `import tensorflow` (from anywhere: keras, the embedder), load it muted."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _MutedLoader(spec.loader)
        return spec


def quiet_tensorflow() -> None:
    """Keep TensorFlow's start-up noise off the terminal (unless --verbose). Cheap: imports nothing.

    Call before the library may import TensorFlow. Sets TensorFlow's log level, ignores Python
    warnings raised by TensorFlow/Keras, and arranges that TensorFlow, when something first imports
    it, is imported with file descriptor 2 muted.
    """
    if settings.verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # else a notice about oneDNN's rounding
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    warnings.filterwarnings("ignore", module=NOISY_MODULES)  # e.g. Keras's "`shuffle=True` was passed"
    for name in ("tensorflow", "absl", "keras", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if "tensorflow" not in sys.modules and not any(isinstance(f, _MuteTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _MuteTensorFlowImport())


# -- errors -----------------------------------------------------------------------------------------


class CommandError(click.ClickException):
    """A failed command, printed as `error: ...` (or as JSON under --json); exit status 1."""

    def __init__(self, message: str, kind: str, file: str | None = None, as_json: bool = False):
        super().__init__(message)
        self.kind = kind
        self.file = file
        self.as_json = as_json

    def show(self, file: Any = None) -> None:
        show_error(self.message, self.kind, file=self.file, as_json=self.as_json)


class UsageCommandError(CommandError):
    """A command line click could not parse: exit status 2, as click's own usage errors."""

    exit_code = 2


def show_error(message: str, kind: str, file: str | None = None, as_json: bool = False) -> None:
    """The one way a command reports failure (see the module docstring)."""
    if as_json:
        error: dict[str, Any] = {"type": kind, "message": message}
        if file is not None:
            error["file"] = file
        click.echo(json.dumps({"error": error}, ensure_ascii=False))
    else:
        click.echo(f"error: {message}", err=True)


def command_error(e: BaseException, as_json: bool) -> CommandError:
    """Translate a library, operating-system or click error into a CommandError."""
    from siamese_index.errors import InvalidImage, SiameseIndexError

    if isinstance(e, InvalidImage):
        return CommandError(str(e), type(e).__name__, file=e.path, as_json=as_json)
    if isinstance(e, SiameseIndexError):
        return CommandError(str(e), type(e).__name__, as_json=as_json)
    if isinstance(e, click.ClickException):
        if isinstance(e, click.UsageError):
            return UsageCommandError(e.format_message(), "UsageError", as_json=as_json)
        return CommandError(e.format_message(), "Error", as_json=as_json)
    if isinstance(e, OSError):  # a folder that cannot be written, a full disk, ...
        filename = getattr(e, "filename", None)
        where = f"{filename}: " if filename else ""
        file = None if filename is None else str(filename)
        return CommandError(f"{where}{e.strerror or e}", type(e).__name__, file=file, as_json=as_json)
    return CommandError(str(e), type(e).__name__, as_json=as_json)


def handle_errors(fn: F) -> F:
    """Turn library and operating-system errors into one `error:` line (or JSON) and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from siamese_index.errors import SiameseIndexError

        as_json = bool(kwargs.get("as_json"))
        try:
            return fn(*args, **kwargs)
        except CommandError as e:
            e.as_json = e.as_json or as_json
            raise
        except BrokenPipeError:  # `... | head`: click exits quietly
            raise
        except (SiameseIndexError, OSError, click.ClickException) as e:
            raise command_error(e, as_json) from e

    return wrapper  # type: ignore[return-value]  # functools.wraps keeps fn's signature


# -- output -----------------------------------------------------------------------------------------


def emit_json(obj: Any) -> None:
    """Print a result (dataclass, dict, list...) as JSON, cleaned by siamese_index.to_jsonable."""
    from siamese_index import to_jsonable

    click.echo(json.dumps(to_jsonable(obj), indent=2, ensure_ascii=False))


def warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def human_bytes(n: float) -> str:
    """A size for people, in IEC units (1 KiB = 1024 bytes): "512 B", "3.2 MiB"."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def progress_line(message: str) -> None:
    """Progress goes to stderr so --json output on stdout stays parseable."""
    click.echo(message, err=True)
    sys.stderr.flush()
