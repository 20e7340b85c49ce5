"""The index commands end to end through click's CliRunner, with a real (tiny) Keras tower on
real PNG files: enroll, enroll-dir, identify, verify, people, backup, status, check, demo.

One tower is trained per module on 30 synthetic people; the people enrolled are others (ids
>= 1000) that it never saw. The shared gallery home is only read by the tests; tests that change
a home work on a copy of it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from siamese_index.cli.main import cli
from siamese_index.config import MODELS_DIR
from siamese_index.imaging.synthetic import identity_image

from .tiny_towers import tiny_towers

STRANGERS = [2000, 2001, 2002, 2003]
STATUS_KEYS = {
    "home",
    "database",
    "schema_version",
    "change_counter",
    "keep_images",
    "model",
    "counts",
    "index",
    "operating_point",
    "consistency",
}


def run(*args, code: int = 0):
    """Invoke the CLI in-process; assert its exit status (showing its output when it differs)."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    return result


def separable_people(pool=range(1000, 1040), n: int = 8) -> list[int]:
    """n synthetic people far apart in pixel space (greedy max-min), chosen without the tower."""
    pixels = {p: np.asarray(identity_image(p, 0, 32).resize((24, 24)), np.float32).ravel() for p in pool}
    chosen = [pool[0]]
    while len(chosen) < n:
        chosen.append(
            max(
                (p for p in pool if p not in chosen),
                key=lambda p: min(np.linalg.norm(pixels[p] - pixels[c]) for c in chosen),
            )
        )
    return chosen


STAFF = separable_people()


# -- module fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tower() -> Path:
    """The suite's shared tiny real tower (tests/tiny_towers.py), trained once per session."""
    return tiny_towers()[0]


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """photo(person, variant) -> the path of a 32x32 PNG of that synthetic person."""
    root = tmp_path_factory.mktemp("photos")

    def make(person: int, variant: int) -> Path:
        path = root / f"p{person}_{variant}.png"
        if not path.exists():
            identity_image(person, variant, 32).save(path)
        return path

    return make


@pytest.fixture(scope="module")
def bad_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return path


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, tower, photo):
    """A home holding STAFF (two photos each) enrolled with enroll-dir; (home, enroll-dir result)."""
    tmp = tmp_path_factory.mktemp("gallery")
    staff = tmp / "staff"
    for p in STAFF:
        (staff / f"E{p}").mkdir(parents=True)
        for v in (0, 2):
            shutil.copyfile(photo(p, v), staff / f"E{p}" / f"{v}.png")
    (staff / f"E{STAFF[0]}" / "notes.txt").write_text("not a photo")
    (staff / f"E{STAFF[1]}" / "broken.png").write_bytes(b"garbage")
    (staff / "README.txt").write_text("a file outside any person folder")
    result = run("enroll-dir", staff, "--home", tmp / "home", "--model", tower, code=1)
    return tmp / "home", result


@pytest.fixture
def home_copy(gallery, tmp_path) -> Path:
    """A private copy of the gallery home, for tests that change it."""
    dst = tmp_path / "home"
    shutil.copytree(gallery[0], dst)
    return dst


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo") / "work"
    result = run("demo", "--json", "--workdir", workdir)
    return workdir, result


def identify_json(home, files, *extra, code: int = 0) -> list[dict]:
    result = run("identify", *files, "--home", home, "--json", *extra, code=code)
    return json.loads(result.stdout)


# -- enroll ------------------------------------------------------------------------------------------
def test_enroll_name_meta_second_call_duplicates_and_bad_files(tmp_path, tower, photo, bad_file):
    home = tmp_path / "home"
    p = STAFF[0]
    first = run(
        "enroll",
        photo(p, 0),
        bad_file,
        "--id",
        "ADA",
        "--name",
        "Ada Lovelace",
        "--meta",
        "dept=R&D",
        "--meta",
        "floor=3",
        "--home",
        home,
        "--model",
        tower,
        code=1,
    )  # one file failed
    assert f"added   {photo(p, 0)} -> ADA" in first.stdout
    assert "1 added, 0 already enrolled, 1 failed" in first.stdout
    assert f"error: {bad_file}: not a readable image" in first.stderr and "created a new home" in first.stderr
    assert "Traceback" not in first.output

    # a second call adds photos; the same photo again (and twice in one call) is "exists"
    second = run("enroll", photo(p, 0), photo(p, 1), photo(p, 1), "--id", "ADA", "--home", home, "--json")
    out = json.loads(second.stdout)
    assert set(out) == {"results", "summary"}
    assert [r["status"] for r in out["results"]] == ["exists", "added", "exists"]
    assert out["summary"] == {"added": 1, "exists": 2, "failed": 0}
    assert set(out["results"][1]) >= {"path", "status", "image_id", "reason", "warnings", "identity"}
    assert out["results"][1]["path"] == str(photo(p, 1)) and out["results"][1]["identity"] == "ADA"
    assert isinstance(out["results"][0]["image_id"], int) and out["results"][0]["reason"] is None

    # every file failing: exit 1 and nothing written
    none = run("enroll", bad_file, "--id", "NOBODY", "--home", home, "--json", code=1)
    assert json.loads(none.stdout)["summary"] == {"added": 0, "exists": 0, "failed": 1}
    shown = json.loads(run("people", "show", "ADA", "--home", home, "--json").stdout)
    assert shown["name"] == "Ada Lovelace" and shown["meta"] == {"dept": "R&D", "floor": "3"}
    assert len(shown["images"]) == 2
    assert [x["id"] for x in json.loads(run("people", "list", "--home", home, "--json").stdout)] == ["ADA"]

    bad_meta = run("enroll", photo(p, 2), "--id", "ADA", "--meta", "novalue", "--home", home, code=2)
    assert "KEY=VALUE" in bad_meta.output


def test_enroll_dir_reports_failures_and_enrolls_the_rest(gallery):
    home, result = gallery
    assert f"{2 * len(STAFF)} added, 0 already enrolled, 3 failed" in result.stdout
    assert "notes.txt: not an image file type" in result.stderr
    assert "broken.png: not a readable image" in result.stderr
    assert "README.txt: not inside a person folder" in result.stderr
    assert f"[{len(STAFF)}/{len(STAFF)}] E{max(STAFF)}" in result.stderr  # progress on stderr
    assert "added" not in result.stderr and "[1/" not in result.stdout
    listed = json.loads(run("people", "list", "--home", home, "--json").stdout)
    assert [p["id"] for p in listed] == sorted(f"E{p}" for p in STAFF)
    assert all(p["images"] == 2 for p in listed)
    assert set(listed[0]) == {"id", "name", "meta", "images", "created"}


# -- identify ----------------------------------------------------------------------------------------
def test_identify_json_batch_is_right_and_survives_unreadable_queries(gallery, photo, bad_file, tmp_path):
    home, _ = gallery
    missing = tmp_path / "missing.png"
    queries = [photo(p, 1) for p in STAFF] + [photo(p, 1) for p in STRANGERS] + [bad_file, missing]
    answers = identify_json(home, queries, "--k", "3", code=1)  # some queries unreadable -> exit 1
    assert [a["query"] for a in answers] == [str(q) for q in queries]
    for a in answers:
        assert {"query", "known", "match", "candidates"} <= set(a)
        assert (a["match"] is not None) == a["known"]
        assert len(a["candidates"]) <= 3 and len({c["id"] for c in a["candidates"]}) == len(a["candidates"])
        for c in a["candidates"]:
            assert set(c) == {"id", "name", "distance"} and c["distance"] >= 0
        dists = [c["distance"] for c in a["candidates"]]
        assert dists == sorted(dists)
        if a["known"]:
            assert a["match"] == a["candidates"][0] and a["match"]["distance"] < a["threshold"]
    *good, bad, gone = answers
    assert all(len(a["candidates"]) == 3 and a["error"] is None for a in good)
    assert bad["error"] and "not a readable image" in bad["error"] and gone["error"] == "no such file"
    assert bad["known"] is False and bad["match"] is None and bad["candidates"] == []

    # The tiny tower is imperfect, but these people are far apart: the nearest identity is
    # right for nearly all, a "known" answer is (nearly) never someone else, strangers are refused.
    truth = [f"E{p}" for p in STAFF]
    staff, strangers = good[: len(STAFF)], good[len(STAFF) :]
    nearest_right = sum(a["candidates"][0]["id"] == t for a, t in zip(staff, truth))
    known_wrong = sum(a["known"] and a["match"]["id"] != t for a, t in zip(staff, truth))
    assert nearest_right >= 6, [(a["candidates"][0], t) for a, t in zip(staff, truth)]
    assert known_wrong <= 1
    assert sum(not a["known"] for a in strangers) >= 3
    assert any(a["known"] for a in staff)  # the calibrated threshold does accept someone

    # a looser threshold (the model's pair threshold) accepts more of them, still rightly
    pair_threshold = json.loads(run("status", "--home", home, "--json").stdout)["model"]["threshold"]
    loose = identify_json(home, [photo(p, 1) for p in STAFF], "--threshold", pair_threshold)
    assert all(a["threshold"] == pytest.approx(pair_threshold) for a in loose)
    assert sum(a["known"] and a["match"]["id"] == t for a, t in zip(loose, truth)) >= 6


def test_identify_text(gallery, photo, bad_file):
    home, _ = gallery
    p = STAFF[0]
    queries = [photo(p, 0), photo(STRANGERS[0], 1)]
    ok = run("identify", *queries, "--home", home)
    lines = ok.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{photo(p, 0)}: E{p}  distance ")  # an enrolled photo itself: distance ~0
    assert lines[1].startswith(f"{photo(STRANGERS[0], 1)}: unknown  (nearest ")
    some_bad = run("identify", photo(p, 0), bad_file, "--home", home, code=1)
    assert some_bad.stdout.count("\n") == 1 and f"E{p}" in some_bad.stdout
    assert f"error: {bad_file}: not a readable image" in some_bad.stderr
    assert "1 of 2 queries could not be read" in some_bad.stderr


# -- verify ------------------------------------------------------------------------------------------
def test_verify_with_and_without_a_home(gallery, tower, photo, bad_file):
    home, _ = gallery
    a, b = STAFF[0], STAFF[1]
    same = run("verify", photo(a, 1), photo(a, 3), "--home", home)
    assert same.stdout.startswith("same: distance ") and "< threshold" in same.stdout
    diff = json.loads(run("verify", photo(a, 1), photo(b, 1), "--home", home, "--json").stdout)
    assert set(diff) == {"image_a", "image_b", "distance", "threshold", "same", "warnings"}
    assert diff["same"] is False and diff["distance"] >= diff["threshold"]
    assert diff["image_a"] == str(photo(a, 1))
    # without a home, with the model directory: the same tower, the same distance
    alone = json.loads(run("verify", photo(a, 1), photo(b, 1), "--model", tower, "--json").stdout)
    assert alone["distance"] == pytest.approx(diff["distance"], abs=1e-5)
    assert alone["threshold"] == pytest.approx(diff["threshold"])
    unreadable = run("verify", photo(a, 1), bad_file, "--home", home, code=1)
    assert "broken.png" in unreadable.output and "Traceback" not in unreadable.output


# -- people ------------------------------------------------------------------------------------------
def test_people_list_and_show(gallery):
    home, _ = gallery
    listed = run("people", "list", "--home", home)
    rows = listed.stdout.splitlines()
    assert rows[0].split() == ["ID", "NAME", "PHOTOS"] and len(rows) == 1 + len(STAFF)
    assert rows[1].split() == [f"E{min(STAFF)}", "-", "2"]
    assert f"{len(STAFF)} people" in listed.stderr
    p = STAFF[0]
    shown = run("people", "show", f"E{p}", "--home", home).stdout
    assert f"id:       E{p}" in shown and "photos:   2" in shown and "0.png" in shown
    info = json.loads(run("people", "show", f"E{p}", "--home", home, "--json").stdout)
    assert info["id"] == f"E{p}" and len(info["images"]) == 2
    assert set(info["images"][0]) >= {"image_id", "source_name", "sha256", "stored_path"}
    nobody = run("people", "show", "NOBODY", "--home", home, code=1)
    assert "no enrolled identity 'NOBODY'" in nobody.output and "Traceback" not in nobody.output


def test_people_rename_remove_image_merge_remove(home_copy, photo):
    home = home_copy
    a, b, c = (f"E{p}" for p in STAFF[:3])
    assert run("people", "rename", a, "Ada", "--home", home).stdout.strip() == f"renamed {a} to 'Ada'"
    renamed = json.loads(run("people", "rename", b, "Bob", "--home", home, "--json").stdout)
    assert renamed["id"] == b and renamed["name"] == "Bob" and renamed["images"] == 2

    gone = json.loads(run("people", "remove-image", a, "2.png", "--home", home, "--json").stdout)
    assert gone["id"] == a and gone["remaining_images"] == 1 and gone["files_deleted"] == 1
    assert gone["source_name"].endswith("2.png")
    text = run("people", "remove-image", b, "0.png", "--home", home).stdout
    assert text.startswith("removed image ") and f"of {b}; 1 photo left" in text
    run("people", "remove-image", b, "9.png", "--home", home, code=1)

    merged = json.loads(run("people", "merge", a, b, "--home", home, "--json").stdout)
    assert merged == {"id": a, "into": b, "moved": 1, "duplicates_dropped": 0}
    assert "merged" in run("people", "merge", c, b, "--home", home).stdout
    listed = {p["id"]: p for p in json.loads(run("people", "list", "--home", home, "--json").stdout)}
    assert a not in listed and c not in listed and listed[b]["images"] == 4 and listed[b]["name"] == "Bob"

    removed = json.loads(run("people", "remove", b, "--home", home, "--json").stdout)
    assert removed == {"id": b, "images": 4, "files_deleted": 4}
    d = f"E{STAFF[3]}"
    assert (
        run("people", "remove", d, "--home", home).stdout.strip() == f"removed {d}: 2 photos, 2 stored copies deleted"
    )
    run("people", "remove", d, "--home", home, code=1)
    # removed people never come back from the index
    answers = identify_json(home, [photo(p, 0) for p in STAFF[:4]], "--k", "10")
    assert not {cand["id"] for ans in answers for cand in ans["candidates"]} & {a, b, c, d}
    assert json.loads(run("check", "--home", home, "--json").stdout)["ok"]


# -- backup, status, check ---------------------------------------------------------------------------
def test_backup_opens_as_a_home_and_identifies_the_same(gallery, photo, tmp_path):
    home, _ = gallery
    out = json.loads(run("backup", tmp_path / "bk", "--home", home, "--json").stdout)
    assert set(out) == {"path", "identities", "images", "stored_images", "missing_images", "bytes"}
    assert out["identities"] == len(STAFF) and out["images"] == 2 * len(STAFF) and out["missing_images"] == 0
    queries = [photo(p, 1) for p in STAFF] + [photo(STRANGERS[0], 1)]
    original = identify_json(home, queries)
    copy = identify_json(tmp_path / "bk", queries)
    assert [(a["known"], [c["id"] for c in a["candidates"]]) for a in copy] == [
        (a["known"], [c["id"] for c in a["candidates"]]) for a in original
    ]
    assert np.allclose(
        [a["candidates"][0]["distance"] for a in copy], [a["candidates"][0]["distance"] for a in original], atol=1e-5
    )
    text = run("backup", tmp_path / "bk2", "--home", home).stdout
    assert text.startswith(f"backed up {len(STAFF)} people, {2 * len(STAFF)} photos")
    again = run("backup", tmp_path / "bk", "--home", home, code=1)
    assert "not empty" in again.output and "Traceback" not in again.output


def test_status(gallery):
    home, _ = gallery
    info = json.loads(run("status", "--home", home, "--json").stdout)
    assert STATUS_KEYS <= set(info)
    assert info["counts"]["identities"] == len(STAFF) and info["counts"]["images"] == 2 * len(STAFF)
    assert info["consistency"] == {"ok": True, "problems": []}
    assert {"threshold", "method", "gallery_size", "target_far", "margin"} <= set(info["operating_point"])
    assert info["operating_point"]["gallery_size"] == len(STAFF)
    text = run("status", "--home", home).stdout
    assert f"people:      {len(STAFF)} (" in text and "consistency: ok" in text and "identify:" in text


def test_check_finds_a_corrupt_faiss_file_and_repair_fixes_it(home_copy, photo):
    home = home_copy
    clean = run("check", "--home", home, "--json")
    report = json.loads(clean.stdout)
    assert set(report) == {"ok", "problems", "repaired", "unrepaired", "checked"} and report["ok"]
    assert report["checked"] == {"images": 2 * len(STAFF), "embeddings": 2 * len(STAFF), "stored_files": 2 * len(STAFF)}
    assert run("check", "--home", home).stdout.splitlines()[-1] == "ok"
    before = identify_json(home, [photo(STAFF[0], 1)])

    faiss_file = home / "index.faiss"
    data = bytearray(faiss_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    faiss_file.write_bytes(bytes(data))
    found = run("check", "--home", home, "--json", code=1)  # found, not repaired
    found = json.loads(found.stdout)
    assert not found["ok"] and found["repaired"] == [] and found["unrepaired"]
    assert {p["kind"] for p in found["problems"]} == {"index_file"}
    assert faiss_file.read_bytes() == bytes(data)  # check alone changes nothing
    text = run("check", "--home", home, code=1).stdout
    assert "problem: index_file:" in text and "run check --repair" in text

    fixed = run("check", "--repair", "--home", home)
    assert "repaired: rebuilt the FAISS index from SQLite" in fixed.stdout
    assert json.loads(run("check", "--home", home, "--json").stdout)["ok"]
    assert identify_json(home, [photo(STAFF[0], 1)]) == before


# -- models and homes --------------------------------------------------------------------------------
def test_a_different_model_is_refused(gallery, demo_run, photo):
    home, _ = gallery
    other = MODELS_DIR / "demo-cartoon-v1"  # another real tower (the demo's)
    before = run("people", "list", "--home", home, "--json").stdout
    refused = run("enroll", photo(3000, 0), "--id", "X", "--home", home, "--model", other, code=1)
    assert "this home was built with model" in refused.output and "Traceback" not in refused.output
    refused = run("verify", photo(3000, 0), photo(3000, 1), "--home", home, "--model", other, code=1)
    assert "this home was built with model" in refused.output
    assert run("people", "list", "--home", home, "--json").stdout == before


@pytest.mark.parametrize(
    "args",
    [
        ["identify", "q.png"],
        ["people", "list"],
        ["people", "show", "X"],
        ["status"],
        ["check"],
        ["backup", "bk"],
        ["people", "remove", "X"],
        ["verify", "a.png", "b.png"],
    ],
)
def test_a_missing_home_gives_a_clear_message(tmp_path, args):
    missing = tmp_path / "no-home"
    args = [tmp_path / a if a.endswith((".png", "bk")) else a for a in args]
    result = run(*args, "--home", missing, code=1)
    assert "no siamese-index home at" in result.output and str(missing) in result.output
    assert "Traceback" not in result.output and not missing.exists()


def test_every_index_command_has_help():
    for args in (
        ["enroll"],
        ["enroll-dir"],
        ["identify"],
        ["verify"],
        ["people"],
        ["people", "list"],
        ["people", "show"],
        ["people", "rename"],
        ["people", "remove"],
        ["people", "remove-image"],
        ["people", "merge"],
        ["backup"],
        ["status"],
        ["check"],
        ["demo"],
    ):
        result = run(*args, "--help")
        assert "Usage:" in result.output and len(result.output.splitlines()) > 4, args


# -- demo --------------------------------------------------------------------------------------------
def test_demo_json(demo_run):
    workdir, result = demo_run
    summary = json.loads(result.stdout)
    assert set(summary) == {
        "model",
        "enrolled",
        "known_right",
        "known_queries",
        "strangers_refused",
        "strangers",
        "verify_same",
        "verify_different",
        "threshold",
    }
    assert summary["enrolled"] == 8 and summary["known_queries"] == 8 and summary["strangers"] == 4
    # The shipped demo tower tells these never-seen cartoon people apart and refuses strangers.
    assert summary["known_right"] >= 6 and summary["strangers_refused"] >= 3
    assert summary["verify_same"] and summary["verify_different"]
    assert (workdir / "home" / "index.db").is_file()
