"""Load benchmark of the HTTP service: concurrent lookups of real image files while another
process enrolls, at several index sizes.

    python benchmarks/service_load.py [--sizes 1000,100000] [--seconds 60] [--clients 8]
                                      [--model DIR] [--workdir DIR] [--enroll-every 0.5] [--json OUT]

Per size it:
1. makes a home with the model (--model, or a tiny seed-conv tower trained here on synthetic
   people, 24x24 grayscale, 50-d; reused from --workdir when there);
2. enrolls 40 "real" people through the library, one photo each (synthetic.identity_image files
   written to disk, embedded by the tower: nothing faked);
3. fills the home up to SIZE images with synthetic vectors written through the storage layer
   (storage.db tables: identities F000001... with 5 images each, content hashes of their
   names, no stored copies, one embedding row per image for the active model version). Each
   vector is a random direction (taken non-negative when the tower's real embeddings are, as a
   ReLU tower's are) scaled to the median norm of the real embeddings: for a unit-norm tower
   these are random unit vectors. The FAISS file is then rebuilt from SQLite by opening the home;
4. creates a read key and starts `siamese-index serve` on 127.0.0.1 in a subprocess, and waits
   for /v1/ready (at 100,000 images start-up includes the first gallery-check threshold, which
   is quadratic: minutes);
5. starts the enroller, another process that enrolls a new person (one real photo) through the
   library every --enroll-every seconds for the whole run;
6. runs --clients threads, each with its own HTTP connection, for --seconds: POST /v1/identify
   of a random query file (photos 1-3 of the 40 real people, read from disk per request), and
   records latency and status;
7. prints requests, errors (any non-200 or transport error: must be 0), throughput, p50 / p90 /
   p99 / max latency, how often the real person is the nearest identity, the enroller's count,
   and whether the people it enrolled are found by the service afterwards.

It also prints the server's CPU time per lookup (from /proc: comparable across machine loads)
and the load average. --enroll-every 0 runs without the enroller (lookups alone). The clients
run on the same machine as the server and compete with it for the CPU.
Exit status 1 when any request failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

REAL_PEOPLE = list(range(1000, 1040))  # never in the tiny tower's training people (0-23)
PER_FILLER = 5
WRITER_FIRST_PERSON = 5000
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0"}


def say(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------------
def tiny_tower(out: Path) -> Path:
    if (out / "config.json").is_file():
        return out
    from siamese_index.imaging.loading import Preprocessing
    from siamese_index.imaging.synthetic import make_identity_folder
    from siamese_index.training.datasets import load_dataset
    from siamese_index.training.trainer import TrainOptions, train

    prep = Preprocessing(24, 24, 1)
    root = make_identity_folder(out.parent / "train-ids", identities=24, per_identity=5)
    train(
        load_dataset(root, prep),
        out,
        TrainOptions(
            arch="seed-conv",
            epochs=6,
            seed=0,
            val_fraction=0.25,
            identities_per_batch=12,
            images_per_identity=4,
            steps_per_epoch=8,
            learning_rate=3e-3,
            augmentation="none",
        ),
        prep,
    )
    return out


def photo(folder: Path, person: int, variant: int) -> Path:
    from siamese_index.imaging.synthetic import identity_image

    path = folder / f"p{person}_{variant}.png"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        identity_image(person, variant, 32).save(path)
    return path


def fill(home: Path, target_images: int, seed: int = 0) -> int:
    """Write synthetic identities with PER_FILLER vectors each through the storage layer until the
    home holds target_images images. Returns how many were written."""
    from sqlalchemy import func, insert, select

    from siamese_index.storage.db import (
        DB_NAME,
        LOCK_NAME,
        Database,
        embeddings,
        identities,
        images,
        model_versions,
        now_iso,
    )

    db = Database(home / DB_NAME, home / LOCK_NAME)
    try:
        with db.read() as conn:
            mv = conn.execute(
                select(model_versions.c.id, model_versions.c.dim).where(model_versions.c.active == 1)
            ).one()
            have = int(conn.execute(select(func.count()).select_from(images)).scalar())
            real = np.stack(
                [
                    np.frombuffer(b, "<f4")
                    for b in conn.execute(
                        select(embeddings.c.vector).where(embeddings.c.model_version == mv.id)
                    ).scalars()
                ]
            )
            next_ident = int(conn.execute(select(func.max(identities.c.id))).scalar() or 0) + 1
            next_image = int(conn.execute(select(func.max(images.c.id))).scalar() or 0) + 1
        need = max(0, target_images - have)
        if not need:
            return 0
        rng = np.random.default_rng(seed)
        nonneg = bool((real >= 0).all())
        scale = float(np.median(np.linalg.norm(real, axis=1)))
        now = now_iso()
        written = 0
        with db.write() as txn:
            while written < need:
                n = min(PER_FILLER, need - written)
                ext = f"F{next_ident:07d}"
                txn.conn.execute(
                    insert(identities).values(
                        id=next_ident, external_id=ext, name=None, meta="{}", created_at=now, updated_at=now
                    )
                )
                v = rng.standard_normal((n, mv.dim)).astype(np.float32)
                if nonneg:
                    v = np.abs(v)
                v *= scale / np.linalg.norm(v, axis=1, keepdims=True)
                ids = list(range(next_image, next_image + n))
                txn.conn.execute(
                    insert(images),
                    [
                        {
                            "id": i,
                            "identity_id": next_ident,
                            "content_sha256": hashlib.sha256(f"{ext}/{j}".encode()).hexdigest(),
                            "source_name": "synthetic vector",
                            "width": None,
                            "height": None,
                            "bytes": None,
                            "stored_path": None,
                            "created_at": now,
                        }
                        for j, i in enumerate(ids)
                    ],
                )
                txn.conn.execute(
                    insert(embeddings),
                    [
                        {
                            "image_id": i,
                            "model_version": mv.id,
                            "vector": np.ascontiguousarray(v[j], "<f4").tobytes(),
                            "created_at": now,
                        }
                        for j, i in enumerate(ids)
                    ],
                )
                next_ident += 1
                next_image += n
                written += n
        return written
    finally:
        db.close()


def build_home(home: Path, model: Path, size: int, photos: Path) -> dict:
    from siamese_index import KeyStore, SiameseIndex

    t0 = time.monotonic()
    with SiameseIndex.open(home, model=model) as idx:
        for p in REAL_PEOPLE:
            res = idx.enroll(f"R{p}", [photo(photos, p, 0)], name=f"Real {p}", allow_no_face=True)
            assert res[0].status in ("added", "exists"), res
    filled = fill(home, size)
    SiameseIndex.open(home).close()  # rebuilds the FAISS file from SQLite and saves it
    with KeyStore.open(home) as store:
        _, key = store.create("read")
    return {"key": key, "filled": filled, "seconds": time.monotonic() - t0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path, port: int, log: Path, ready_timeout: float):
    import httpx

    out = open(log, "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "siamese_index.cli",
            "serve",
            "--home",
            str(home),
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=ENV,
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the server stopped:\n{log.read_text()[-3000:]}")
        if time.monotonic() - t0 > ready_timeout:
            proc.terminate()
            raise SystemExit(f"the server was not ready after {ready_timeout:.0f}s:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(base + "/v1/ready", timeout=5).status_code == 200:
                return proc, base, time.monotonic() - t0
        except httpx.TransportError:
            pass
        time.sleep(0.25)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux /proc), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------------
# The enroller (runs as its own process: `service_load.py --_enroller HOME PHOTOS EVERY`)
# ---------------------------------------------------------------------------------------------
def enroller_main(home: str, photos: str, every: float) -> None:
    from siamese_index.errors import Busy
    from siamese_index.index.facade import SiameseIndex

    folder = Path(photos)
    done, failed, busy, acked = 0, 0, 0, []
    with SiameseIndex.open(home, create=False, lock_timeout=10) as idx:
        warm = photo(folder, WRITER_FIRST_PERSON - 1, 0)
        idx.verify(warm, warm, threshold=1.0)  # load the model before the clock starts
        print("ready", flush=True)
        sys.stdin.readline()  # "go"
        stop_at = time.monotonic() + float(sys.stdin.readline())
        person = WRITER_FIRST_PERSON
        while time.monotonic() < stop_at:
            t0 = time.monotonic()
            try:
                res = idx.enroll(f"W{person}", [photo(folder, person, 0)], allow_no_face=True)
                if res[0].status == "added":
                    done += 1
                    acked.append([f"W{person}", str(photo(folder, person, 0)), time.time()])
                else:
                    failed += 1
            except Busy:
                busy += 1
            person += 1
            time.sleep(max(0.0, float(every) - (time.monotonic() - t0)))
    print(json.dumps({"enrolled": done, "failed": failed, "busy": busy, "acked": acked[-5:]}), flush=True)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def clients(base: str, key: str, files: list[tuple[str, Path]], n: int, seconds: float) -> list[tuple]:
    import httpx

    results: list[tuple] = []
    lock = threading.Lock()
    start = threading.Barrier(n + 1)

    def work(i: int) -> None:
        rng = random.Random(i)
        mine = []
        with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=60) as c:
            c.get("/v1/health")  # open the connection
            start.wait()
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                who, path = rng.choice(files)
                data = path.read_bytes()
                t0 = time.perf_counter()
                try:
                    r = c.post("/v1/identify", files={"image": (path.name, data)}, data={"k": "5"})
                    dt = time.perf_counter() - t0
                    if r.status_code == 200:
                        body = r.json()
                        top = body["candidates"][0]["id"] if body["candidates"] else None
                        mine.append((dt, 200, top == who, body["known"] and body["match"]["id"] == who))
                    else:
                        mine.append((dt, r.status_code, False, False))
                except httpx.HTTPError as e:
                    mine.append((time.perf_counter() - t0, type(e).__name__, False, False))
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    start.wait()
    for t in threads:
        t.join()
    return results


def run_size(size: int, args, model: Path, work: Path) -> dict:
    import httpx

    home = work / f"home-{size}"
    photos = work / "photos"
    if home.exists():
        import shutil

        shutil.rmtree(home)
    say(f"\n== {size:,} images: building the home")
    built = build_home(home, model, size, photos)
    say(f"   {len(REAL_PEOPLE)} real people + {built['filled']:,} synthetic vectors in {built['seconds']:.1f}s")
    queries = [(f"R{p}", photo(photos, p, v)) for p in REAL_PEOPLE for v in (1, 2, 3)]
    proc, base, ready_s = start_server(home, free_port(), work / f"server-{size}.log", args.ready_timeout)
    say(f"   server ready in {ready_s:.1f}s")
    writer = None
    if args.enroll_every > 0:
        writer = subprocess.Popen(
            [sys.executable, __file__, "--_enroller", str(home), str(photos), str(args.enroll_every)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=ENV,
            cwd=ROOT,
        )
    wrote = {"enrolled": 0, "failed": 0, "busy": 0, "acked": []}
    found = 0
    try:
        if writer is not None:
            line = writer.stdout.readline()
            if line.strip() != "ready":
                raise SystemExit(f"the enroller did not start: {line}{writer.stdout.read()}")
        with httpx.Client(base_url=base, headers={"X-API-Key": built["key"]}, timeout=60) as c:
            for _, path in queries[:8]:  # warm up
                c.post("/v1/identify", files={"image": (path.name, path.read_bytes())})
        if writer is not None:
            writer.stdin.write(f"go\n{args.seconds}\n")
            writer.stdin.flush()
        t0, cpu0, own0 = time.monotonic(), cpu_seconds(proc.pid), time.process_time()
        res = clients(base, built["key"], queries, args.clients, args.seconds)
        elapsed = time.monotonic() - t0
        cpu1, own1 = cpu_seconds(proc.pid), time.process_time()
        server_cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
        if writer is not None:
            out, _ = writer.communicate(timeout=120)
            wrote = json.loads(out.strip().splitlines()[-1])
        with httpx.Client(base_url=base, headers={"X-API-Key": built["key"]}, timeout=60) as c:
            for pid, path, _ in wrote["acked"]:
                r = c.post("/v1/identify", files={"image": (Path(path).name, Path(path).read_bytes())})
                found += r.status_code == 200 and r.json()["candidates"][0]["id"] == pid
    finally:
        if writer is not None and writer.poll() is None:
            writer.kill()
        stop(proc)
    lat = np.array([r[0] for r in res]) * 1000
    ok = [r for r in res if r[1] == 200]
    errors = len(res) - len(ok)
    kinds: dict[str, int] = {}
    for r in res:
        if r[1] != 200:
            kinds[str(r[1])] = kinds.get(str(r[1]), 0) + 1
    report = {
        "size": size,
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "requests": len(res),
        "errors": errors,
        "error_kinds": kinds,
        "throughput": round(len(res) / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p90_ms": round(float(np.percentile(lat, 90)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "max_ms": round(float(lat.max()), 1),
        "rank1": round(sum(r[2] for r in ok) / max(len(ok), 1), 3),
        "known_right": round(sum(r[3] for r in ok) / max(len(ok), 1), 3),
        "enrolled_meanwhile": wrote["enrolled"],
        "enroll_failed": wrote["failed"],
        "enroll_busy": wrote["busy"],
        "enrolled_found_after": f"{found}/{len(wrote['acked'])}",
        "server_ready_s": round(ready_s, 1),
        "server_cpu_ms_per_lookup": None if server_cpu is None else round(1000 * server_cpu / max(len(res), 1), 2),
        "client_cpu_ms_per_lookup": round(1000 * (own1 - own0) / max(len(res), 1), 2),
        "load_average": round(os.getloadavg()[0], 2),
    }
    say(
        f"   {report['requests']} lookups in {elapsed:.1f}s by {args.clients} clients: {errors} errors "
        f"{kinds or ''}; {report['throughput']}/s; latency p50 {report['p50_ms']} ms, p90 {report['p90_ms']} ms, "
        f"p99 {report['p99_ms']} ms, max {report['max_ms']} ms"
    )
    say(
        f"   server CPU {report['server_cpu_ms_per_lookup']} ms per lookup, clients' CPU "
        f"{report['client_cpu_ms_per_lookup']} ms per lookup; 1-minute load average {report['load_average']}"
    )
    say(
        f"   nearest identity right {report['rank1']:.1%} (known and right {report['known_right']:.1%}); "
        f"the enroller added {wrote['enrolled']} people meanwhile ({wrote['busy']} busy, {wrote['failed']} failed); "
        f"its last {len(wrote['acked'])} found afterwards: {report['enrolled_found_after']}"
    )
    return report


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_enroller":
        enroller_main(*sys.argv[2:5])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,100000", help="comma-separated index sizes (images)")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument(
        "--enroll-every", type=float, default=0.5, help="seconds between the enroller's enrollments (0: no enroller)"
    )
    ap.add_argument("--model", type=Path, default=None, help="model directory (default: train a tiny one)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temporary folder)")
    ap.add_argument("--ready-timeout", type=float, default=3600.0)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    os.environ.update({k: v for k, v in ENV.items() if k.startswith("TF_")})

    def go(work: Path) -> list[dict]:
        work.mkdir(parents=True, exist_ok=True)
        model = args.model or tiny_tower(work / "tower")
        say(
            f"model {model}; {args.clients} clients x {args.seconds:g}s per size; an enrollment every "
            f"{args.enroll_every:g}s from another process; {os.cpu_count()} CPUs"
        )
        return [run_size(size, args, model, work) for size in sizes]

    if args.workdir:
        reports = go(args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="siamese-load-") as tmp:
            reports = go(Path(tmp))
    say("\n| images | lookups/s | p50 ms | p99 ms | errors | enrolled meanwhile |")
    say("|---:|---:|---:|---:|---:|---:|")
    for r in reports:
        say(
            f"| {r['size']:,} | {r['throughput']} | {r['p50_ms']} | {r['p99_ms']} | {r['errors']} | {r['enrolled_meanwhile']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2) + "\n")
    if any(r["errors"] for r in reports):
        sys.exit(1)


if __name__ == "__main__":
    main()
