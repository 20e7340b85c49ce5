"""The HTTP service's commands: keys create/list/revoke, serve. Imports stay inside the commands."""

from __future__ import annotations

from pathlib import Path

import click

from .output import emit_json, handle_errors, quiet_tensorflow, warn

home_option = click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=None,
    help="The index's home folder (default: $SIAMESE_INDEX_HOME, else ~/.local/share/siamese-index).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


@click.group()
def keys():
    """Create, list and revoke API keys for the HTTP service (stored hashed in the home)."""


@keys.command("create")
@click.option(
    "--role",
    required=True,
    type=click.Choice(["read", "admin"]),
    help="read: identify, verify, list, status. admin: also enroll, rename, delete.",
)
@click.option("--name", default=None, help="A name to list and revoke it by (default: ROLE-N).")
@home_option
@json_option
@handle_errors
def keys_create(role, name, home, as_json):
    """Create a key and print it once (only its hash is kept)."""
    from siamese_index import KeyStore

    with KeyStore.open(home) as store:
        info, secret = store.create(role, name)
    if as_json:
        emit_json({**info.to_dict(), "key": secret})
        return
    click.echo(secret)
    click.echo(
        f"created {info.role} key {info.name!r}; send it in the X-API-Key header. "
        f"It is shown only now: store it safely.",
        err=True,
    )


@keys.command("list")
@home_option
@json_option
@handle_errors
def keys_list(home, as_json):
    """List keys: name, role, created, revoked."""
    from siamese_index import KeyStore

    with KeyStore.open(home) as store:
        everything = store.list()
    if as_json:
        emit_json([k.to_dict() for k in everything])
        return
    for k in everything:
        state = f"revoked {k.revoked_at}" if k.revoked_at else "active"
        click.echo(f"{k.name}\t{k.role}\tcreated {k.created_at}\t{state}")
    click.echo(f"{len(everything)} key(s), {sum(k.active for k in everything)} active", err=True)


@keys.command("revoke")
@click.argument("name")
@home_option
@handle_errors
def keys_revoke(name, home):
    """Revoke the key NAME; a running service refuses it from the next request on."""
    from siamese_index import KeyStore

    with KeyStore.open(home) as store:
        info = store.revoke(name)
    click.echo(f"revoked {info.name} ({info.role}) at {info.revoked_at}")


@click.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to bind. The default answers this machine only."
)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="Server processes; each loads its own copy of the model.",
)
@click.option(
    "--max-upload-mb",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0, min_open=True),
    help="Size cap per uploaded image (larger: 413).",
)
@click.option(
    "--max-batch",
    default=32,
    show_default=True,
    type=click.IntRange(1),
    help="Most images in one batch identify or enroll request.",
)
@click.option(
    "--lock-timeout",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds a write waits for the home's writer lock before answering 503.",
)
@click.option(
    "--model",
    default=None,
    help="Model directory or name under models/ for a NEW home (an existing home keeps its model).",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
@home_option
@handle_errors
def serve(host, port, workers, max_upload_mb, max_batch, lock_timeout, model, log_level, home):
    """Serve lookups over HTTP (JSON under /v1/, docs at /docs, schema at /openapi.json).

    Every route but /v1/health and /v1/ready needs an X-API-Key (see `siamese-index keys`).
    The CLI can enroll and remove people in the same home while it runs.
    """
    quiet_tensorflow()
    import os

    import uvicorn

    from siamese_index import ServiceSettings, create_app

    settings = ServiceSettings.from_env(
        home=home,
        model=model,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        max_batch=max_batch,
        lock_timeout=lock_timeout,
    )
    where = _warn_before_serving(settings, home, host)
    _show_library_log(log_level)
    click.echo(f"serving {where} on http://{host}:{port} (docs: /docs; health: /v1/health)", err=True)
    if workers == 1:
        uvicorn.run(create_app(settings=settings), host=host, port=port, log_level=log_level)
    else:
        os.environ.update(settings.env())
        uvicorn.run(
            "siamese_index.service.app:app_from_environment",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
        )


def _warn_before_serving(settings, home, host) -> Path:
    """Warn about a home without keys, a new home, or a non-loopback address; returns the home."""
    from siamese_index import KeyStore, home_exists
    from siamese_index.config import resolve_home

    where = resolve_home(settings.home)
    if home_exists(where):
        with KeyStore.open(where) as store:
            if not store.has_keys():
                warn(
                    f"no active API key for {where}: create one with `siamese-index keys create --role read"
                    f"{' --home ' + str(home) if home else ''}`"
                )
    else:
        warn(f"{where} is a new home; it is created with the model when the service starts")
    if host not in ("127.0.0.1", "localhost", "::1"):
        warn(f"binding {host}: the service is reachable from other machines (keys travel in clear; put TLS in front)")
    return where


def _show_library_log(level: str) -> None:
    """Print the library's own log messages like uvicorn's (the library never configures logging)."""
    import logging

    library_log = logging.getLogger("siamese_index")
    if not library_log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        library_log.addHandler(handler)
        library_log.setLevel(level.upper())
        library_log.propagate = False


COMMANDS = [keys, serve]
