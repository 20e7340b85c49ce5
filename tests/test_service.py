"""The HTTP service: in-process with FastAPI's TestClient over a tiny trained tower (every test
gets its own copy of a home with 8 people and two keys), plus a few real-server tests (a
`siamese-index serve` subprocess and uvicorn in a thread) on 127.0.0.1. The CLI writes to the
same home while the service runs."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from siamese_index.cli.main import cli
from siamese_index.imaging.synthetic import identity_image
from tests.tiny_towers import tiny_towers

with warnings.catch_warnings():  # Starlette >= 1.x would rather use httpx2; httpx still works
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

STAFF = range(100, 108)  # enrolled in every home (never seen by the tower in training)
UPLOAD_CAP = 200 * 1024  # --max-upload-mb 0.1953125
MAX_BATCH = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str):
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result


# -- shared, read-only: the tower, the photos, a template home ------------------------------------
@pytest.fixture(scope="session")
def tower() -> Path:
    """The tiny seed-conv tower (24x24 grayscale, 50-d), trained once per test session."""
    return tiny_towers()[0]


@pytest.fixture(scope="session")
def photo(tmp_path_factory):
    """photo(person, variant) -> the path of a synthetic photo (written once, never changed)."""
    photos = tmp_path_factory.mktemp("photos")
    lock = threading.Lock()

    def make(person: int, variant: int) -> Path:
        path = photos / f"p{person}_{variant}.png"
        with lock:
            if not path.exists():
                identity_image(person, variant, 32).save(path)
        return path

    return make


@pytest.fixture(scope="session")
def template(tmp_path_factory, tower, photo) -> dict:
    """A closed home with the staff enrolled, an admin key (ops) and a read key (kiosk). Tests
    copy it; nobody writes to it."""
    from siamese_index import SiameseIndex

    home = tmp_path_factory.mktemp("template") / "home"
    with SiameseIndex.open(home, model=tower) as idx:
        for p in STAFF:
            idx.enroll(f"E{p}", [photo(p, 0)], name=f"Person {p}")
    admin = json.loads(_cli("keys", "create", "--role", "admin", "--name", "ops", "--home", str(home), "--json").stdout)
    reader = json.loads(
        _cli("keys", "create", "--role", "read", "--name", "kiosk", "--home", str(home), "--json").stdout
    )
    return {"home": home, "admin": admin["key"], "read": reader["key"]}


def _copy_home(template: dict, where: Path) -> Path:
    home = where / "home"
    shutil.copytree(template["home"], home)
    return home


def _wait_ready(get, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (r := get("/v1/ready")).status_code != 200:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.05)


# -- in-process: a fresh home and app per test ------------------------------------------------------
@pytest.fixture
def world(tmp_path, template, photo, caplog) -> Iterator[dict]:
    """This test's own home (a copy of the template) served in-process; the app is started (its
    lifespan runs) and ready. Afterwards: no request ended in an unexpected error."""
    from siamese_index import ServiceSettings, create_app

    home = _copy_home(template, tmp_path)
    settings = ServiceSettings(home=home, max_upload_bytes=UPLOAD_CAP, max_batch=MAX_BATCH, lock_timeout=0.5)
    app = create_app(settings=settings)
    caplog.set_level(logging.WARNING, logger="siamese_index.service")
    with TestClient(app) as anon:
        _wait_ready(anon.get)
        yield {**template, "home": home, "app": app, "anon": anon, "photo": photo}
    assert not [r for r in caplog.records if "unexpected error" in r.getMessage()]  # no 500 anywhere


def _keyed(world: dict, key: str) -> TestClient:
    # No `with`: the app's lifespan belongs to world["anon"]; this client only adds the header.
    return TestClient(world["app"], headers={"X-API-Key": world[key]})


@pytest.fixture
def client(world) -> TestClient:
    return _keyed(world, "read")


@pytest.fixture
def admin(world) -> TestClient:
    return _keyed(world, "admin")


def _png(world, person, variant) -> tuple[str, bytes]:
    path = world["photo"](person, variant)
    return path.name, path.read_bytes()


# -- service basics ------------------------------------------------------------------------------
def test_health_docs_and_schema_need_no_key(world):
    anon = world["anon"]
    health = anon.get("/v1/health")
    assert health.status_code == 200 and health.json()["ready"] is True and health.json()["status"] == "ok"
    assert anon.get("/v1/ready").status_code == 200
    schema = anon.get("/openapi.json").json()
    docs = anon.get("/docs")
    paths = set(schema["paths"])
    assert {
        "/v1/identify",
        "/v1/identify/batch",
        "/v1/verify",
        "/v1/identities",
        "/v1/identities/{person_id}",
        "/v1/identities/{person_id}/images",
        "/v1/status",
        "/v1/health",
        "/v1/ready",
    } <= paths
    assert all(p.startswith("/v1/") for p in paths)
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    page = docs.text
    assert "<script" not in page and "cdn" not in page.lower() and "src=" not in page  # works offline
    for path in ("/v1/identify", "/v1/identities/{person_id}"):
        assert path in page
    assert "key: admin" in page and "key: read" in page


def test_response_schemas_are_the_result_types():
    """A field of a result type is in the schema without a second edit: the response models are
    the dataclasses of siamese_index.types (or envelopes around them)."""
    import dataclasses

    from siamese_index import ServiceSettings, create_app
    from siamese_index.types import EnrollResult, EnrollSummary, Identification, Match, Person, Verification

    app = create_app(settings=ServiceSettings(home="/nonexistent/siamese-home", create=False))
    comps = app.openapi()["components"]["schemas"]
    for kind in (Identification, Match, Verification, Person, EnrollResult, EnrollSummary):
        assert set(comps[kind.__name__]["properties"]) == {f.name for f in dataclasses.fields(kind)}, kind
    ops = app.openapi()["paths"]

    def answer(path, method, code="200"):
        return ops[path][method]["responses"][code]["content"]["application/json"]["schema"]["$ref"].rsplit("/")[-1]

    assert answer("/v1/identify", "post") == "Identification"
    assert answer("/v1/verify", "post") == "Verification"
    assert answer("/v1/identities/{person_id}", "patch") == "Person"
    assert comps["BatchOut"]["properties"]["results"]["items"]["$ref"].endswith("/Identification")
    assert comps["PeopleOut"]["properties"]["identities"]["items"]["$ref"].endswith("/Person")
    assert comps["EnrollOut"]["properties"]["results"]["items"]["$ref"].endswith("/EnrollResult")
    assert comps["EnrollOut"]["properties"]["summary"]["$ref"].endswith("/EnrollSummary")


def test_auth_none_wrong_revoked_and_read_key_writing(world, client):
    name, data = _png(world, 100, 1)
    anon = world["anon"]
    r = anon.post("/v1/identify", files={"image": (name, data)})
    assert r.status_code == 401 and "X-API-Key" in r.json()["detail"]
    for route in ("/v1/status", "/v1/identities", "/v1/identities/E100"):
        assert anon.get(route).status_code == 401
        assert anon.get(route, headers={"X-API-Key": "sik_wrong"}).status_code == 401
    assert anon.delete("/v1/identities/E100").status_code == 401
    # a read key: every write route is forbidden, and nothing changes
    writes = [
        ("POST", "/v1/identities", {"data": {"id": "R1"}, "files": [("images", (name, data))]}),
        ("POST", "/v1/identities/E100/images", {"files": [("images", (name, data))]}),
        ("PATCH", "/v1/identities/E100", {"json": {"name": "hacked"}}),
        ("DELETE", "/v1/identities/E100", {}),
    ]
    for method, route, kwargs in writes:
        r = client.request(method, route, **kwargs)
        assert r.status_code == 403 and "read key" in r.json()["detail"], (route, r.text)
    assert client.get("/v1/identities/E100").json()["name"] == "Person 100"
    assert client.get("/v1/identities/R1").status_code == 404
    # a revoked key stops at the next request
    made = json.loads(_cli("keys", "create", "--role", "read", "--home", str(world["home"]), "--json").stdout)
    temp = TestClient(world["app"], headers={"X-API-Key": made["key"]})
    assert temp.get("/v1/identities").status_code == 200
    _cli("keys", "revoke", made["name"], "--home", str(world["home"]))
    r = temp.get("/v1/identities")
    assert r.status_code == 401 and "revoked" in r.json()["detail"]


# -- lookups -------------------------------------------------------------------------------------
def test_identify_answers_like_the_cli(world, client):
    path = world["photo"](103, 1)
    r = client.post("/v1/identify", files={"image": (path.name, path.read_bytes())}, data={"k": "3"})
    assert r.status_code == 200, r.text
    got = r.json()
    out = _cli("identify", str(path), "--home", str(world["home"]), "--k", "3", "--json")
    [want] = json.loads(out.stdout)
    assert set(got) == set(want) == {"query", "known", "match", "candidates", "threshold", "warnings", "error"}
    assert got["query"] == Path(want["query"]).name == path.name
    assert got["known"] == want["known"] and got["error"] is None
    assert got["threshold"] == pytest.approx(want["threshold"], rel=1e-6)
    assert (got["match"] or {}).get("id") == (want["match"] or {}).get("id")
    assert [c["id"] for c in got["candidates"]] == [c["id"] for c in want["candidates"]]
    assert [c["distance"] for c in got["candidates"]] == pytest.approx(
        [c["distance"] for c in want["candidates"]], abs=1e-4
    )
    assert len(got["candidates"]) == 3
    # an enrolled photo itself: distance 0, known; a threshold given is used as is
    name, data = _png(world, 105, 0)
    exact = client.post("/v1/identify", files={"image": (name, data)}, data={"threshold": "0.5"}).json()
    assert exact["known"] and exact["match"]["id"] == "E105" and exact["match"]["distance"] < 1e-3
    assert exact["threshold"] == 0.5


def test_batch_identify_keeps_order_and_reports_bad_images(world, client):
    files = [
        ("images", _png(world, 101, 0)),
        ("images", ("notes.txt", b"not an image at all")),
        ("images", _png(world, 106, 0)),
    ]
    r = client.post("/v1/identify/batch", files=files, data={"k": "2"})
    assert r.status_code == 200, r.text
    first, bad, third = r.json()["results"]
    assert first["match"]["id"] == "E101" and third["match"]["id"] == "E106"
    assert len(first["candidates"]) == 2
    assert bad["query"] == "notes.txt" and bad["known"] is False and bad["candidates"] == []
    assert "not a readable image" in bad["error"]


def test_concurrent_lookups_are_batched_and_consistent(world, client):
    name, data = _png(world, 102, 0)
    before = client.get("/v1/status").json()["service"]

    def one(_):
        r = client.post("/v1/identify", files={"image": (name, data)})
        return r.status_code, r.json()["match"]["id"]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(24)))
    assert answers == [(200, "E102")] * 24
    after = client.get("/v1/status").json()["service"]
    assert after["lookups"] - before["lookups"] == 24
    assert after["lookup_batches"] - before["lookup_batches"] <= 24


def test_verify(world, client):
    same = client.post("/v1/verify", files={"image_a": _png(world, 104, 1), "image_b": _png(world, 104, 1)})
    assert same.status_code == 200, same.text
    body = same.json()
    assert set(body) == {"image_a", "image_b", "distance", "threshold", "same", "warnings"}
    assert body["same"] is True and body["distance"] < 1e-3
    forced = client.post(
        "/v1/verify", files={"image_a": _png(world, 104, 1), "image_b": _png(world, 107, 2)}, data={"threshold": "1e-9"}
    ).json()
    assert forced["same"] is False and forced["threshold"] == 1e-9
    bad = client.post("/v1/verify", files={"image_a": _png(world, 104, 1), "image_b": ("x.png", b"\x89PNG\r\n\x1a\n")})
    assert bad.status_code == 422 and bad.json()["file"] == "x.png"


def test_bad_uploads_get_4xx_with_the_reason(world, client):
    r = client.post("/v1/identify", files={"image": ("notes.txt", b"hello, not an image")})
    assert r.status_code == 422 and "not a readable image" in r.json()["reason"]
    r = client.post("/v1/identify", files={"image": ("empty.png", b"")})
    assert r.status_code == 422 and r.json()["reason"] == "empty file"
    name, data = _png(world, 100, 0)
    r = client.post("/v1/identify", files={"image": ("cut.png", data[: len(data) // 2])})
    assert r.status_code == 422 and "truncated" in r.json()["detail"]
    r = client.post("/v1/identify", files={"image": ("big.png", os.urandom(UPLOAD_CAP + 1))})
    assert r.status_code == 413 and "cap" in r.json()["detail"]
    r = client.post("/v1/identify", files={"image": ("huge.png", os.urandom(UPLOAD_CAP * (MAX_BATCH + 8)))})
    assert r.status_code == 413 and "request body of" in r.json()["detail"]  # from its Content-Length
    r = client.post("/v1/identify/batch", files=[("images", (name, data))] * (MAX_BATCH + 1))
    assert r.status_code == 413 and f"cap is {MAX_BATCH}" in r.json()["detail"]
    r = client.post("/v1/identify")
    assert r.status_code == 422 and "image" in r.json()["detail"]
    r = client.post("/v1/identify", files={"image": (name, data)}, data={"k": "0"})
    assert r.status_code == 422 and "k" in r.json()["detail"]
    assert client.get("/v1/health").status_code == 200  # (and `world` checks: no 500 anywhere)


# -- identities ----------------------------------------------------------------------------------
def test_enroll_list_get_rename_add_delete(world, client, admin):
    files = [("images", _png(world, 150, 0)), ("images", _png(world, 150, 1)), ("images", ("bad.jpg", b"nope"))]
    r = admin.post("/v1/identities", data={"id": "N150", "name": "Nia", "meta": '{"team": "night"}'}, files=files)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["summary"] == {"added": 2, "exists": 0, "failed": 1}
    assert [x["status"] for x in body["results"]] == ["added", "added", "failed"]
    assert body["identity"]["id"] == "N150" and body["identity"]["meta"] == {"team": "night"}
    assert len(body["identity"]["images"]) == 2
    again = admin.post("/v1/identities", data={"id": "N150"}, files=[("images", _png(world, 150, 2))])
    assert again.status_code == 409
    failed = admin.post("/v1/identities", data={"id": "N151"}, files=[("images", ("bad.png", b"nope"))])
    assert failed.status_code == 422 and failed.json()["summary"]["failed"] == 1
    assert client.get("/v1/identities/N151").status_code == 404  # nothing written
    assert (
        admin.post(
            "/v1/identities", data={"id": "N152", "meta": "[1]"}, files=[("images", _png(world, 152, 0))]
        ).status_code
        == 400
    )
    assert admin.post("/v1/identities", data={"id": "a/b"}, files=[("images", _png(world, 152, 0))]).status_code == 400

    more = admin.post(
        "/v1/identities/N150/images", files=[("images", _png(world, 150, 2)), ("images", _png(world, 150, 0))]
    )
    assert more.status_code == 200 and more.json()["summary"] == {"added": 1, "exists": 1, "failed": 0}
    assert admin.post("/v1/identities/NOPE/images", files=[("images", _png(world, 150, 3))]).status_code == 404

    listed = client.get("/v1/identities", params={"limit": 2, "offset": 0}).json()
    assert listed["total"] == len(STAFF) + 1 and len(listed["identities"]) == 2
    everyone = client.get("/v1/identities", params={"limit": 1000}).json()["identities"]
    assert {"id": "N150", "name": "Nia", "meta": {"team": "night"}, "images": 3} == {
        k: v for k, v in next(p for p in everyone if p["id"] == "N150").items() if k != "created"
    }
    one = client.get("/v1/identities/N150").json()
    assert one["name"] == "Nia" and len(one["images"]) == 3 and {"image_id", "sha256"} <= set(one["images"][0])

    renamed = admin.patch("/v1/identities/N150", json={"name": "Nia B."})
    assert renamed.status_code == 200 and renamed.json()["name"] == "Nia B."
    assert admin.patch("/v1/identities/NOPE", json={"name": "x"}).status_code == 404
    found = client.post("/v1/identify", files={"image": _png(world, 150, 1)}).json()
    assert found["match"]["id"] == "N150" and found["match"]["name"] == "Nia B."

    gone = admin.delete("/v1/identities/N150")
    assert gone.status_code == 200 and gone.json() == {"id": "N150", "images": 3, "files_deleted": 3}
    assert client.get("/v1/identities/N150").status_code == 404
    assert admin.delete("/v1/identities/N150").status_code == 404
    after = client.post("/v1/identify", files={"image": _png(world, 150, 1)}, data={"k": "20"}).json()
    assert "N150" not in [c["id"] for c in after["candidates"]]


def test_status(world, client):
    r = client.get("/v1/status")
    assert r.status_code == 200
    s = r.json()
    assert s["version"] and s["model"]["model_id"].startswith("seed-conv-") and s["model"]["dim"] == 50
    assert s["counts"]["identities"] == len(STAFF) and s["operating_point"]["threshold"] > 0
    assert s["service"]["ready"] is True and s["service"]["max_batch"] == MAX_BATCH


# -- together with the CLI -------------------------------------------------------------------------
def test_cli_enrollment_is_found_within_2s_and_a_deletion_is_never_returned(world, client):
    path = world["photo"](170, 0)
    _cli("enroll", str(path), "--id", "C170", "--name", "From CLI", "--home", str(world["home"]))
    t0 = time.monotonic()
    while True:
        r = client.post("/v1/identify", files={"image": (path.name, path.read_bytes())})
        assert r.status_code == 200
        if r.json()["known"] and r.json()["match"]["id"] == "C170":
            break
        assert time.monotonic() - t0 < 2.0, r.json()
        time.sleep(0.05)
    assert time.monotonic() - t0 < 2.0
    assert client.get("/v1/identities/C170").json()["name"] == "From CLI"

    _cli("people", "remove", "C170", "--home", str(world["home"]))
    for _ in range(5):  # from the moment the CLI said "removed", never again
        r = client.post("/v1/identify", files={"image": (path.name, path.read_bytes())}, data={"k": "50"})
        assert r.status_code == 200 and "C170" not in [c["id"] for c in r.json()["candidates"]]
    assert client.get("/v1/identities/C170").status_code == 404


def test_service_writes_are_seen_by_the_cli(world, admin):
    r = admin.post("/v1/identities", data={"id": "S180"}, files=[("images", _png(world, 180, 0))])
    assert r.status_code == 201
    path = world["photo"](180, 0)
    [answer] = json.loads(_cli("identify", str(path), "--home", str(world["home"]), "--json").stdout)
    assert answer["match"]["id"] == "S180"
    assert admin.delete("/v1/identities/S180").status_code == 200
    [answer] = json.loads(_cli("identify", str(path), "--home", str(world["home"]), "--k", "50", "--json").stdout)
    assert "S180" not in [c["id"] for c in answer["candidates"]]


def test_a_busy_writer_lock_gives_503_while_lookups_go_on(world, client, admin):
    from siamese_index.storage.db import LOCK_NAME, WriterLock

    lock = WriterLock(world["home"] / LOCK_NAME, timeout=5)
    lock.acquire()  # as another process's long write would (flock: objects exclude each other)
    try:
        t0 = time.monotonic()
        r = admin.post("/v1/identities", data={"id": "B190"}, files=[("images", _png(world, 190, 0))])
        assert r.status_code == 503 and r.headers["retry-after"] and "busy" in r.json()["detail"]
        assert time.monotonic() - t0 < 5
        assert admin.delete("/v1/identities/E107").status_code == 503
        t0 = time.monotonic()
        looked = client.post("/v1/identify", files={"image": _png(world, 107, 0)})
        assert looked.status_code == 200 and looked.json()["match"]["id"] == "E107"
        assert time.monotonic() - t0 < 2
    finally:
        lock.release()
    assert admin.post("/v1/identities", data={"id": "B190"}, files=[("images", _png(world, 190, 0))]).status_code == 201
    assert admin.delete("/v1/identities/B190").status_code == 200


def test_a_failed_start_is_reported_by_health_and_ready(tmp_path):
    from siamese_index import ServiceSettings, create_app

    app = create_app(settings=ServiceSettings(home=tmp_path / "absent", create=False, retry_after=2))
    with TestClient(app) as anon:
        deadline = time.monotonic() + 30
        while (health := anon.get("/v1/health").json())["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert health["status"] == "error" and health["ready"] is False and health["error"]
        r = anon.get("/v1/ready")
        assert r.status_code == 503 and r.json()["status"] == "error"
    assert not (tmp_path / "absent" / "index.db").exists()


# -- a real server: `siamese-index serve` in a subprocess -------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory, template) -> Iterator[dict]:
    """`siamese-index serve` over a copy of the template home; what it answered while loading."""
    tmp = tmp_path_factory.mktemp("served")
    home = _copy_home(template, tmp)
    port = _free_port()
    log = open(tmp / "server.log", "w")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    args = ["serve", "--home", str(home), "--port", str(port), "--max-upload-mb", str(UPLOAD_CAP / 1024 / 1024)]
    args += ["--max-batch", str(MAX_BATCH), "--lock-timeout", "0.5", "--log-level", "warning"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "siamese_index.cli", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    base = f"http://127.0.0.1:{port}"
    seen_loading = []
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not become ready:\n{(tmp / 'server.log').read_text()[-3000:]}")
            try:
                r = httpx.get(base + "/v1/ready", timeout=2)
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            if r.status_code == 200:
                break
            seen_loading.append((r.status_code, r.headers.get("retry-after"), r.json()))
            time.sleep(0.1)
        yield {**template, "home": home, "base": base, "seen_loading": seen_loading, "log": tmp / "server.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.slow
def test_real_server_starts_loading_then_ready_on_loopback(server):
    assert server["seen_loading"], "the server should report loading before the model is ready"
    status, retry, body = server["seen_loading"][0]
    assert status == 503 and retry and body["ready"] is False and body["status"] == "loading"
    with httpx.Client(base_url=server["base"], timeout=10) as anon:
        health = anon.get("/v1/health")
        assert health.status_code == 200 and health.json()["ready"] is True and health.json()["status"] == "ok"
        assert anon.get("/v1/ready").status_code == 200
        assert anon.get("/docs").status_code == 200
    port = int(server["base"].rsplit(":", 1)[1])
    conns = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True)
    if conns.returncode != 0:
        pytest.skip("ss is not available")
    local = [line.split()[3] for line in conns.stdout.splitlines() if line.strip()]
    assert local == [f"127.0.0.1:{port}"]  # binds loopback by default


@pytest.mark.slow
def test_real_server_lookup_caps_and_a_revoked_key(server, photo):
    path = photo(103, 0)
    with httpx.Client(base_url=server["base"], headers={"X-API-Key": server["read"]}, timeout=30) as c:
        r = c.post("/v1/identify", files={"image": (path.name, path.read_bytes())}, data={"k": "3"})
        assert r.status_code == 200 and r.json()["match"]["id"] == "E103" and len(r.json()["candidates"]) == 3
        r = c.post("/v1/identify", files={"image": ("huge.png", os.urandom(UPLOAD_CAP * (MAX_BATCH + 8)))})
        assert r.status_code == 413  # refused from its Content-Length, before the body is read
    with httpx.Client(base_url=server["base"], timeout=10) as anon:
        assert anon.post("/v1/identify", files={"image": (path.name, path.read_bytes())}).status_code == 401
    made = json.loads(_cli("keys", "create", "--role", "read", "--home", str(server["home"]), "--json").stdout)
    with httpx.Client(base_url=server["base"], headers={"X-API-Key": made["key"]}, timeout=10) as temp:
        assert temp.get("/v1/identities").status_code == 200
        _cli("keys", "revoke", made["name"], "--home", str(server["home"]))  # another process
        r = temp.get("/v1/identities")
        assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert "unexpected error" not in server["log"].read_text()


# -- readiness over real uvicorn in a thread (a gated loader makes "loading" deterministic) ---------
def test_readiness_while_loading(tmp_path, monkeypatch):
    import uvicorn

    from siamese_index import KeyStore, SiameseIndex, __version__, create_app
    from siamese_index.service.state import ServiceState
    from tests.conftest import FakeEmbedder, write_identity_image

    idx = SiameseIndex.open(tmp_path / "home", embedder=FakeEmbedder())
    idx.enroll("A", [write_identity_image(tmp_path / "a.png", 1)])
    with KeyStore.open(tmp_path / "home") as store:
        _, key = store.create("read")
    gate = threading.Event()
    original = ServiceState.load

    def gated(self):
        gate.wait(30)
        original(self)

    monkeypatch.setattr(ServiceState, "load", gated)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(idx), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            assert c.get("/v1/health").json() == {
                "status": "loading",
                "ready": False,
                "version": __version__,
                "error": None,
            }
            r = c.get("/v1/ready")
            assert r.status_code == 503 and r.headers["retry-after"]
            data = (tmp_path / "a.png").read_bytes()
            r = c.post("/v1/identify", files={"image": ("a.png", data)}, headers={"X-API-Key": key})
            assert r.status_code == 503 and r.headers["retry-after"] and "loading" in r.json()["detail"]
            r = c.post("/v1/identify", files={"image": ("a.png", data)})
            assert r.status_code == 401  # keys are checked even while loading
            gate.set()
            _wait_ready(c.get, timeout=10)
            r = c.post("/v1/identify", files={"image": ("a.png", data)}, headers={"X-API-Key": key})
            assert r.status_code == 200 and r.json()["match"]["id"] == "A"
    finally:
        gate.set()
        server.should_exit = True
        thread.join(10)
        idx.close()
