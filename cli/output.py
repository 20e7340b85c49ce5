"""Shared helpers for commands: error translation, JSON output, quiet TensorFlow."""

from __future__ import annotations

import functools
import json
import math
import os
import sys

import click


def quiet_tensorflow() -> None:
    """TensorFlow's C++ start-up chatter is noise for a command-line user."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def handle_errors(fn):
    """Turn library and operating-system errors into a one-line message and exit status 1 (never a traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from siamese_index.errors import SiameseIndexError

        try:
            return fn(*args, **kwargs)
        except SiameseIndexError as e:
            raise click.ClickException(str(e)) from e
        except BrokenPipeError:  # `... | head`: click exits quietly
            raise
        except OSError as e:  # a folder that cannot be written, a full disk, ...
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            raise click.ClickException(f"{where}{e.strerror or e}") from e

    return wrapper


def _clean(obj):
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    return obj


def emit_json(obj) -> None:
    click.echo(json.dumps(_clean(obj), indent=2, ensure_ascii=False))


def warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def fmt(v, digits: int = 3) -> str:
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
