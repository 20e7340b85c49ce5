"""API keys: created once, stored hashed, listed, revoked at once; the `keys` commands."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys

import pytest
from click.testing import CliRunner

from siamese_index.cli.main import cli
from siamese_index.errors import InvalidData, NotFound
from siamese_index.service.keys import KEY_PREFIX, KeyStore, hash_key
from tests.conftest import FakeEmbedder


@pytest.fixture
def home(tmp_path):
    from siamese_index.index.facade import SiameseIndex

    home = tmp_path / "home"
    SiameseIndex.open(home, embedder=FakeEmbedder()).close()
    return home


@pytest.fixture
def store(home):
    with KeyStore.open(home) as s:
        yield s


def test_create_returns_the_secret_once_and_stores_only_its_hash(store, home):
    info, secret = store.create("read", name="kiosk")
    assert secret.startswith(KEY_PREFIX) and len(secret) >= 40
    assert (info.name, info.role, info.active, info.can_write) == ("kiosk", "read", True, False)
    rows = sqlite3.connect(home / "index.db").execute("SELECT name, role, key_hash FROM api_keys").fetchall()
    assert rows == [("kiosk", "read", hashlib.sha256(secret.encode()).hexdigest())]
    assert hash_key(secret) == rows[0][2]
    store.db.checkpoint()
    for path in home.glob("index.db*"):
        assert secret.encode() not in path.read_bytes()


def test_authenticate_and_revoke_at_once(store):
    info, secret = store.create("admin")
    _, other = store.create("read")
    assert store.authenticate(secret) == info and info.can_write
    for bad in (None, "", "sik_nope", secret + "x", secret[:-1], "x" * 500):
        assert store.authenticate(bad) is None
    revoked = store.revoke(info.name)
    assert revoked.revoked_at and not revoked.active
    assert store.authenticate(secret) is None  # no cache: the very next check refuses it
    assert store.authenticate(other).role == "read"
    assert store.revoke(info.name).revoked_at == revoked.revoked_at  # revoking twice changes nothing
    with KeyStore.open(store.db.path.parent) as elsewhere:  # another process's view
        assert elsewhere.authenticate(secret) is None


def test_names_roles_and_listing(store):
    a, _ = store.create("read")
    b, _ = store.create("read")
    c, _ = store.create("admin", name="ops@site")
    assert (a.name, b.name, c.name) == ("read-1", "read-2", "ops@site")
    with pytest.raises(InvalidData, match="already exists"):
        store.create("read", name="ops@site")
    with pytest.raises(InvalidData, match="role"):
        store.create("write")
    with pytest.raises(InvalidData, match="key name"):
        store.create("read", name="has space")
    with pytest.raises(NotFound):
        store.revoke("nobody")
    store.revoke("read-1")
    assert [k.name for k in store.list()] == ["read-1", "read-2", "ops@site"]
    assert [k.name for k in store.list(include_revoked=False)] == ["read-2", "ops@site"]
    assert store.has_keys()
    assert store.create("read")[0].name == "read-3"  # a revoked key's name stays taken


def test_a_missing_home_is_not_created(tmp_path):
    with pytest.raises(NotFound, match="no siamese-index home"):
        KeyStore.open(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


def test_keys_commands(home):
    run = CliRunner()
    created = run.invoke(cli, ["keys", "create", "--role", "admin", "--name", "ops", "--home", str(home), "--json"])
    assert created.exit_code == 0, created.output
    made = json.loads(created.stdout)
    assert made["name"] == "ops" and made["role"] == "admin" and made["key"].startswith(KEY_PREFIX)
    plain = run.invoke(cli, ["keys", "create", "--role", "read", "--home", str(home)])
    assert plain.exit_code == 0 and plain.stdout.strip().startswith(KEY_PREFIX)
    assert "shown only now" in plain.stderr
    listed = run.invoke(cli, ["keys", "list", "--home", str(home), "--json"])
    assert [(k["name"], k["role"], k["active"]) for k in json.loads(listed.stdout)] == [
        ("ops", "admin", True),
        ("read-1", "read", True),
    ]
    assert "key" not in json.loads(listed.stdout)[0]
    revoked = run.invoke(cli, ["keys", "revoke", "ops", "--home", str(home)])
    assert revoked.exit_code == 0 and "revoked ops" in revoked.output
    text = run.invoke(cli, ["keys", "list", "--home", str(home)])
    assert "ops\tadmin" in text.stdout and "revoked" in text.stdout
    missing = run.invoke(cli, ["keys", "revoke", "ghost", "--home", str(home)])
    assert missing.exit_code == 1 and "no API key named 'ghost'" in missing.output
    bad = run.invoke(cli, ["keys", "create", "--role", "read", "--home", str(home.parent / "none")])
    assert bad.exit_code == 1 and "no siamese-index home" in bad.output


def test_help_imports_neither_tensorflow_nor_the_web_framework():
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom siamese_index.cli.main import cli\n"
        "for args in (['--help'], ['serve', '--help'], ['keys', '--help'], ['keys', 'create', '--help']):\n"
        "    r = CliRunner().invoke(cli, args)\n    assert r.exit_code == 0, r.output\n"
        "bad = [m for m in ('tensorflow', 'keras', 'fastapi', 'starlette', 'uvicorn') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_keys_settings_batcher_and_state_import_no_web_framework():
    """Only the service modules that must import FastAPI/Starlette do: the KeyStore (used by the
    CLI), the settings, the batcher and the state do not."""
    code = (
        "import sys\n"
        "import siamese_index.service.keys, siamese_index.service.settings\n"
        "import siamese_index.service.batcher, siamese_index.service.state\n"
        "from siamese_index.service.keys import KeyStore\n"
        "bad = [m for m in ('fastapi', 'starlette', 'pydantic', 'uvicorn', 'tensorflow') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "import siamese_index.service.app\n"
        "assert 'fastapi' in sys.modules  # the check above can fail\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
