"""Batch deduplication: levels, grouping without chaining, bad files, dry run, move/undo/delete,
a crash in the middle of a move, the cache, the CLI, and enroll's near-duplicate warning."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from cli.main import cli
from siamese_index.duplicates import quarantine
from siamese_index.duplicates.linkage import complete_linkage
from siamese_index.duplicates.pipeline import dedup
from siamese_index.duplicates.report import write_report
from siamese_index.imaging import near


# ---------------------------------------------------------------------------------------------
# Synthetic photos: textured scenes, their edited copies, and other photos of the same scene
# ---------------------------------------------------------------------------------------------
def scene(seed: int, size=(240, 200), changed: int | None = None) -> Image.Image:
    """A photo-like picture: a colour gradient and 60 random shapes. `changed` redraws its
    centre (another photo of the same scene: the "same person, different photo" case)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    grad = rng.uniform(-0.4, 0.4, (2, 3))
    arr = rng.uniform(40, 200, 3) + xx[..., None] * grad[0] + yy[..., None] * grad[1]
    im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)

    def shapes(r, n, box):
        x0, y0, x1, y1 = box
        for _ in range(n):
            cx, cy, s = r.uniform(x0, x1), r.uniform(y0, y1), r.uniform(6, 30)
            colour = tuple(int(v) for v in r.integers(0, 256, 3))
            bb = (cx - s, cy - s * r.uniform(0.5, 1.5), cx + s, cy + s * r.uniform(0.5, 1.5))
            kind = r.integers(0, 3)
            if kind == 0:
                draw.rectangle(bb, fill=colour)
            elif kind == 1:
                draw.ellipse(bb, fill=colour)
            else:
                draw.line((cx - s, cy - s, cx + s, cy + s * r.uniform(-1, 1)), fill=colour, width=int(r.integers(2, 6)))

    shapes(rng, 60, (0, 0, w, h))
    if changed is not None:
        r2 = np.random.default_rng(10_000 + changed)
        box = (w * 0.3, h * 0.3, w * 0.7, h * 0.7)
        draw.rectangle(box, fill=tuple(int(v) for v in r2.integers(0, 256, 3)))
        shapes(r2, 15, box)
    return im


def save(im: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kwargs)
    return path


@pytest.fixture
def photos(tmp_path) -> dict[str, Path]:
    """orig and four edited copies of it (one picture); another photo of the same scene; a second
    picture with a byte-identical copy; an unrelated picture."""
    root = tmp_path / "photos"
    im = scene(1)
    w, h = im.size
    p = {
        "orig": save(im, root / "a" / "orig.png"),
        "jpeg": save(im, root / "a" / "copy_jpeg.jpg", quality=30),
        "small": save(im.resize((w // 2, h // 2), Image.Resampling.LANCZOS), root / "b" / "copy_small.png"),
        "crop": save(
            im.crop((int(w * 0.08), int(h * 0.05), int(w * 0.9), int(h * 0.93))), root / "b" / "copy_crop.png"
        ),
        "rot_gray": save(
            ImageOps.grayscale(im.rotate(5, resample=Image.Resampling.BICUBIC)), root / "a" / "copy_rot_gray.png"
        ),
        "tone": save(
            ImageEnhance.Contrast(ImageEnhance.Brightness(im).enhance(1.2)).enhance(0.8),
            root / "c" / "copy_tone.jpg",
            quality=85,
        ),
        "same_scene": save(scene(1, changed=1), root / "a" / "same_scene_other_photo.png"),
        "other": save(scene(2), root / "c" / "other.png"),
        "unrelated": save(scene(3), root / "c" / "unrelated.png"),
    }
    p["other_exact"] = root / "c" / "other_exact_copy.png"
    p["other_exact"].write_bytes(p["other"].read_bytes())
    return p


PICTURE = ("orig", "jpeg", "small", "crop", "rot_gray", "tone")


def groups_as_sets(report) -> list[set[str]]:
    return [{m.path for m in g.members} for g in report.groups]


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------------------------------------
# Levels
# ---------------------------------------------------------------------------------------------
def test_exact_level_groups_identical_bytes_only(photos):
    report = dedup([photos["orig"].parent.parent], level="exact", cache=False)
    assert groups_as_sets(report) == [{str(photos["other"]), str(photos["other_exact"])}]
    assert all(m.distance == 0.0 for m in report.groups[0].members)
    assert report.stats.computed == 10 and report.stats.distinct_contents == 9


def test_near_level_groups_edited_copies_but_not_another_photo(photos):
    report = dedup([photos["orig"].parent.parent], level="near", cache=False, workers=1)
    groups = groups_as_sets(report)
    picture = {str(photos[k]) for k in PICTURE}
    assert picture in groups
    assert {str(photos["other"]), str(photos["other_exact"])} in groups
    assert len(groups) == 2  # the other photo of the same scene and the unrelated one stay alone
    g = report.groups[[i for i, s in enumerate(groups) if s == picture][0]]
    assert g.keep == str(photos["orig"])  # largest: most pixels, then most bytes
    assert g.members[0].path == g.keep and g.members[0].distance == 0.0
    assert all(0 <= m.distance < near.THRESHOLD for m in g.members)
    assert g.max_distance < near.THRESHOLD
    # The other photo of the same scene is far from the picture, not just left out by chance.
    fa = near.features(near.load_gray(photos["orig"]))
    fb = near.features(near.load_gray(photos["same_scene"]))
    assert near.near_distance(fa, fb) > 2 * near.THRESHOLD


def test_keep_rules(photos):
    root = photos["orig"].parent.parent
    for i, key in enumerate(PICTURE):
        os.utime(photos[key], ns=(10**18 + i, 10**18 + (10**9 if key == "crop" else i + 2 * 10**9)))
    oldest = dedup([root], level="near", keep="oldest", cache=False)
    assert str(photos["crop"]) in {g.keep for g in oldest.groups}
    # first: argument order, then path order ("b" given first).
    first = dedup([root / "b", root / "a", root / "c"], level="near", keep="first", cache=False)
    assert str(photos["crop"]) in {g.keep for g in first.groups}  # b/copy_crop.png < b/copy_small.png


class LineEmbedder:
    """A stand-in tower: a picture's mean grey level / 100 is its position on a line."""

    model_id = "line-1"
    dim = 2
    threshold = 1.0

    def prepare(self, source, name=None, strict_face=False):
        from siamese_index.imaging.loading import open_image

        return np.asarray(open_image(source, name).convert("L"), np.float32).mean(keepdims=True), []

    def embed_batch(self, inputs):
        x = np.asarray(inputs, np.float32).reshape(len(inputs), -1)[:, :1] / 100.0
        return np.hstack([x, np.zeros_like(x)]).astype(np.float32)


def test_no_chaining_unit():
    # A~B and B~C under the threshold, A-C far: C must not join A's group.
    known = {(0, 1): 0.2, (1, 2): 0.25, (3, 4): 0.1}
    far = {(0, 2): 0.45}
    groups = complete_linkage(dict(known), 0.3, pair_distance=lambda i, j: far[(i, j)])
    members = [set(g) for g, _ in groups]
    assert {3, 4} in members
    assert not any({0, 2} <= m for m in members)
    assert {0, 1} in members  # the closest pair wins, C stays out
    # A pair never measured counts as far in components too big to measure all pairs.
    groups = complete_linkage({(0, 1): 0.2, (1, 2): 0.2}, 0.3, pair_distance=None, max_dense=2)
    assert [sorted(g) for g, _ in groups] in ([[0, 1]], [[1, 2]])


def test_no_chaining_through_dedup(tmp_path):
    # Grey levels 0, 60, 120 -> positions 0, 0.6, 1.2: A~B, B~C within 1.0, A-C 1.2 apart.
    for name, v in (("a", 0), ("b", 60), ("c", 120)):
        Image.new("L", (16, 16), v).save(tmp_path / f"{name}.png")
    report = dedup([tmp_path], level="identity", embedder=LineEmbedder(), cache=False)
    assert len(report.groups) == 1
    members = {Path(m.path).name for m in report.groups[0].members}
    assert members in ({"a.png", "b.png"}, {"b.png", "c.png"})
    assert report.groups[0].max_distance < 1.0
    assert report.threshold == 1.0


@pytest.fixture(scope="module")
def tiny_face_tower(tmp_path_factory):
    """A real tower trained for a few seconds on 8 synthetic people (as tests/test_training.py)."""
    from siamese_index.imaging.loading import Preprocessing
    from siamese_index.imaging.synthetic import make_identity_folder
    from siamese_index.training.datasets import load_dataset
    from siamese_index.training.trainer import TrainOptions, train

    prep = Preprocessing(24, 24, 1)
    root = make_identity_folder(tmp_path_factory.mktemp("people"), identities=8, per_identity=5)
    out = tmp_path_factory.mktemp("models") / "tower"
    opts = TrainOptions(
        arch="seed-conv",
        epochs=5,
        seed=0,
        val_fraction=0.25,
        identities_per_batch=6,
        images_per_identity=4,
        steps_per_epoch=8,
        learning_rate=3e-3,
        augmentation="none",
    )
    config = train(load_dataset(root, prep), out, opts, prep)
    assert config.threshold
    return out


def test_identity_level_groups_photos_of_one_person(tiny_face_tower, tmp_path):
    from siamese_index.imaging.synthetic import identity_image

    people = [0, 3, 5, 6]
    for p in people:
        for v in range(10, 14):  # photos the tower never saw
            save(identity_image(p, v, 32), tmp_path / "album" / f"p{p}_v{v}.png")
    report = dedup([tmp_path / "album"], level="identity", model=str(tiny_face_tower), cache=tmp_path / "c.sqlite")
    assert report.level == "identity" and report.threshold > 0
    assert report.groups
    for g in report.groups:  # every group is one person
        assert len({Path(m.path).name.split("_")[0] for m in g.members}) == 1
        assert all(m.distance < report.threshold for m in g.members)
    grouped = sum(len(g.members) for g in report.groups)
    assert grouped >= len(people) * 4 // 2
    # A rerun embeds nothing: the vectors come from the cache.
    again = dedup([tmp_path / "album"], level="identity", model=str(tiny_face_tower), cache=tmp_path / "c.sqlite")
    assert again.stats.computed == 0 and again.stats.from_cache == 16
    assert groups_as_sets(again) == groups_as_sets(report)


# ---------------------------------------------------------------------------------------------
# Bad files, dry run, cache
# ---------------------------------------------------------------------------------------------
def test_bad_files_are_reported_and_skipped(photos):
    root = photos["orig"].parent.parent
    bad = root / "bad"
    bad.mkdir()
    data = photos["jpeg"].read_bytes()
    (bad / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (bad / "text.jpg").write_text("not an image")
    (bad / "empty.png").write_bytes(b"")
    (bad / "notes.txt").write_text("ignored: not an image file type")
    report = dedup([root, root / "missing-folder"], level="near", cache=False)
    reasons = {Path(s.path).name: s.reason for s in report.skipped}
    assert set(reasons) == {"truncated.jpg", "text.jpg", "empty.png", "missing-folder"}
    assert "empty" in reasons["empty.png"] and "not a readable image" in reasons["text.jpg"]
    assert "truncated" in reasons["truncated.jpg"] or "corrupt" in reasons["truncated.jpg"]
    assert report.stats.ignored_not_images == 1
    assert {str(photos[k]) for k in PICTURE} in groups_as_sets(report)


def test_dry_run_changes_nothing(photos, tmp_path):
    root = photos["orig"].parent.parent
    before = snapshot(root)
    result = CliRunner().invoke(
        cli, ["dedup", str(root), "--cache", str(tmp_path / "c.sqlite"), "--report", str(tmp_path / "dups.html")]
    )
    assert result.exit_code == 0, result.output
    assert "dry run: nothing changed" in result.stdout
    assert snapshot(root) == before
    assert (tmp_path / "dups.html").read_text().count("<figure") == 8


def test_cache_hit_on_rerun(photos, tmp_path, monkeypatch):
    root = photos["orig"].parent.parent
    cache = tmp_path / "cache.sqlite"
    first = dedup([root], level="near", cache=cache)
    assert first.stats.computed == 9 and first.stats.from_cache == 0

    def no_decoding(*a, **k):
        raise AssertionError("a rerun must not decode images")

    monkeypatch.setattr(near, "load_gray", no_decoding)
    again = dedup([root], level="near", cache=cache)
    assert again.stats.computed == 0 and again.stats.from_cache == 10
    assert again.stats.checked_pairs == 0
    assert groups_as_sets(again) == groups_as_sets(first)


# ---------------------------------------------------------------------------------------------
# Applying: move, undo, delete, crash
# ---------------------------------------------------------------------------------------------
def test_apply_move_then_undo(photos, tmp_path):
    root = photos["orig"].parent.parent
    before = snapshot(root)
    q = tmp_path / "quarantine"
    runner = CliRunner()
    result = runner.invoke(cli, ["dedup", str(root), "--no-cache", "--apply", "move", "--to", str(q), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["applied"]["moved"] == 6 and out["applied"]["skipped"] == []
    keeps = {g["keep"] for g in out["groups"]}
    for key, path in photos.items():
        if str(path) in keeps or key in ("same_scene", "unrelated"):
            assert path.is_file()  # kept files and non-duplicates never move
        else:
            assert not path.exists()
    manifest = json.loads((q / "manifest.json").read_text())
    assert manifest["status"] == "moved" and len(manifest["moves"]) == 6
    assert all((q / m["to"]).is_file() for m in manifest["moves"])
    assert snapshot(root) != before

    result = runner.invoke(cli, ["dedup", "--undo", str(q / "manifest.json")])
    assert result.exit_code == 0, result.output
    assert "restored 6 files" in result.stdout
    assert snapshot(root) == before
    assert not any(p.is_file() for p in (q / "files").rglob("*")) if (q / "files").exists() else True
    again = runner.invoke(cli, ["dedup", "--undo", str(q / "manifest.json"), "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["restored"] == 0
    # The folder now holds a used manifest: a new move must go elsewhere.
    result = runner.invoke(cli, ["dedup", str(root), "--no-cache", "--apply", "move", "--to", str(q)])
    assert result.exit_code == 1 and "already exists" in result.output


def test_delete_needs_yes_and_keeps_kept_files(photos):
    root = photos["orig"].parent.parent
    before = snapshot(root)
    runner = CliRunner()
    result = runner.invoke(cli, ["dedup", str(root), "--no-cache", "--apply", "delete"])
    assert result.exit_code == 2 and "cannot be undone" in result.output
    assert snapshot(root) == before
    result = runner.invoke(cli, ["dedup", str(root), "--no-cache", "--apply", "delete", "--yes"])
    assert result.exit_code == 0, result.output
    assert "deleted 6 files" in result.stdout and "cannot be undone" in result.stdout
    left = {p.name for p in root.rglob("*") if p.is_file()}
    assert left == {"orig.png", "same_scene_other_photo.png", "unrelated.png", "other.png"} or left == {
        "orig.png",
        "same_scene_other_photo.png",
        "unrelated.png",
        "other_exact_copy.png",
    }


def test_apply_guards(photos, tmp_path):
    root = photos["orig"].parent.parent
    runner = CliRunner()
    for args, message in (
        (["--apply", "move"], "--to"),
        (["--to", str(tmp_path / "q")], "--apply move"),
        (["--level", "identity", "--apply", "move", "--to", str(tmp_path / "q")], "ONE photo per person"),
        (["--report", str(tmp_path / "r.txt")], ".json, .csv or .html"),
    ):
        result = runner.invoke(cli, ["dedup", str(root), *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    result = runner.invoke(cli, ["dedup", "--undo", str(tmp_path / "nope.json")])
    assert result.exit_code == 1 and "no such manifest" in result.output
    # A quarantine inside the photos would be scanned again next time: refused.
    result = runner.invoke(cli, ["dedup", str(root), "--no-cache", "--apply", "move", "--to", str(root / "a")])
    assert result.exit_code == 1 and "outside the photos" in result.output


def test_crash_mid_apply_loses_no_file(photos, tmp_path, monkeypatch):
    root = photos["orig"].parent.parent
    before = snapshot(root)
    report = dedup([root], level="near", cache=False)
    q = tmp_path / "q"
    real_move = quarantine._move_file
    calls = []

    def crashing_move(src, dst):
        calls.append(src)
        if len(calls) == 3:
            raise KeyboardInterrupt("power cut")  # not an OSError: the move stops right here
        real_move(src, dst)

    monkeypatch.setattr(quarantine, "_move_file", crashing_move)
    with pytest.raises(KeyboardInterrupt):
        quarantine.move_duplicates(report, q)
    manifest = json.loads((q / "manifest.json").read_text())  # written before the first move
    assert manifest["status"] == "moving" and len(manifest["moves"]) == 6
    for m in manifest["moves"]:  # each file is in exactly one place
        assert Path(m["from"]).is_file() != (q / m["to"]).is_file()
    assert sum((q / m["to"]).is_file() for m in manifest["moves"]) == 2
    # A crash inside a cross-device move leaves a file in both places: undo keeps one.
    m = next(m for m in manifest["moves"] if Path(m["from"]).is_file())
    (q / m["to"]).parent.mkdir(parents=True, exist_ok=True)
    (q / m["to"]).write_bytes(Path(m["from"]).read_bytes())
    monkeypatch.setattr(quarantine, "_move_file", real_move)
    result = quarantine.undo(q / "manifest.json")
    assert result.restored == 2 and result.problems == ()
    assert snapshot(root) == before
    assert not (q / m["to"]).exists()


def test_files_changed_since_the_scan_are_left_alone(photos, tmp_path):
    root = photos["orig"].parent.parent
    report = dedup([root], level="near", cache=False)
    group = next(g for g in report.groups if len(g.members) > 2)
    changed = Path(group.duplicates[0])
    changed.write_bytes(changed.read_bytes() + b"\0")
    other = next(g for g in report.groups if len(g.members) == 2)
    Path(other.keep).unlink()  # the kept file is gone: its duplicate must stay
    result = quarantine.move_duplicates(report, tmp_path / "q")
    reasons = {s.path: s.reason for s in result.skipped}
    assert "changed since the scan" in reasons[str(changed)]
    assert "no longer exists" in reasons[other.duplicates[0]]
    assert changed.is_file() and Path(other.duplicates[0]).is_file()
    assert result.moved == len(group.duplicates) - 1


# ---------------------------------------------------------------------------------------------
# CLI output, reports, HEIC, --help
# ---------------------------------------------------------------------------------------------
def test_cli_json_shape(photos, tmp_path):
    root = photos["orig"].parent.parent
    (root / "broken.jpg").write_text("nope")
    result = CliRunner().invoke(cli, ["dedup", str(root), "--json", "--cache", str(tmp_path / "c.sqlite")])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert {"groups", "skipped", "stats", "level", "threshold"} <= set(out)
    assert out["level"] == "near" and out["threshold"] == near.THRESHOLD
    for g in out["groups"]:
        paths = [m["path"] for m in g["members"]]
        assert g["keep"] == paths[0] and len(paths) >= 2
        assert all(isinstance(m["distance"], float) for m in g["members"])
    assert [Path(s["path"]).name for s in out["skipped"]] == ["broken.jpg"]
    for key in ("images", "groups", "duplicates", "skipped", "computed", "from_cache", "seconds"):
        assert key in out["stats"]
    assert "describe" in result.stderr  # progress goes to stderr


def test_reports_by_suffix(photos, tmp_path):
    report = dedup([photos["orig"].parent.parent], level="near", cache=False)
    data = json.loads(write_report(report, tmp_path / "r.json").read_text())
    assert data["groups"] == report.to_dict()["groups"]
    rows = (write_report(report, tmp_path / "r.csv").read_text()).strip().splitlines()
    assert rows[0] == "group,path,keep,distance" and len(rows) == 1 + 8
    assert "<img" in write_report(report, tmp_path / "r.html").read_text()


def test_heic_photos_are_read(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    im = scene(4)
    heic = tmp_path / "phone.heic"
    try:
        pillow_heif.from_pillow(im).save(heic, quality=80)
    except Exception as e:  # noqa: BLE001 - a build without an HEVC encoder
        pytest.skip(f"pillow-heif cannot write HEIC here ({e})")
    save(im, tmp_path / "original.png")
    report = dedup([tmp_path], level="near", cache=False)
    assert groups_as_sets(report) == [{str(heic), str(tmp_path / "original.png")}]


def test_dedup_help_does_not_import_tensorflow():
    code = (
        "import sys; from click.testing import CliRunner; from cli.main import cli; "
        "r = CliRunner().invoke(cli, ['dedup', '--help']); assert r.exit_code == 0; "
        "assert 'tensorflow' not in sys.modules and 'siamese_index.duplicates.pipeline' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


# ---------------------------------------------------------------------------------------------
# enroll: a near-duplicate of a photo enrolled under another id
# ---------------------------------------------------------------------------------------------
def test_enroll_warns_on_a_near_duplicate_of_another_id(index, tmp_path):
    orig = save(scene(5), tmp_path / "e" / "ada.png")
    copy = save(scene(5).resize((120, 100)), tmp_path / "e" / "ada_small.jpg", quality=40)
    other = save(scene(6), tmp_path / "e" / "bob.png")
    [r] = index.enroll("A", [orig])
    assert not any("near-duplicate" in w for w in r.warnings)
    [r] = index.enroll("B", [copy])
    assert r.status == "added"
    assert any("near-duplicate" in w and "enrolled under A" in w for w in r.warnings), r.warnings
    [r] = index.enroll("C", [other])
    assert not any("near-duplicate" in w or "same file" in w for w in r.warnings)
    [r] = index.enroll("D", [orig])
    assert any("same file" in w and "enrolled under A" in w for w in r.warnings), r.warnings
    # More photos of the same id are no news.
    [r] = index.enroll("A", [copy])
    assert not any("enrolled under A" in w for w in r.warnings)


# ---------------------------------------------------------------------------------------------
# The steps on their own: scan, contents, search, linkage, describe; typed results
# ---------------------------------------------------------------------------------------------
def test_scan_order_skips_and_ignores(tmp_path):
    from siamese_index.duplicates.scan import scan

    for rel in ("b/2.png", "b/1.png", "a/z.jpg", ".hidden/x.png", "a/.dot.png"):
        save(scene(0, size=(20, 20)), tmp_path / rel)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / "empty.png").write_bytes(b"")
    (tmp_path / "b" / "link.png").symlink_to(tmp_path / "b" / "1.png")
    out = scan([tmp_path / "b", tmp_path, tmp_path / "missing"])
    names = [Path(f.path).relative_to(tmp_path).as_posix() for f in out.files]
    assert names == ["b/1.png", "b/2.png", "a/z.jpg"]  # argument order, then path order, each file once
    assert [f.order for f in out.files] == [0, 1, 2]
    assert [(Path(s.path).name, s.reason) for s in out.skipped] == [
        ("empty.png", "empty file"),
        ("missing", "no such file or folder"),
    ]
    assert out.not_images == 1 and out.links == 2  # the link is met under b/ and again under the root


def test_image_info_of_an_unreadable_picture_is_three_nones():
    from siamese_index.duplicates.scan import NO_INFO, image_info

    assert image_info(b"not an image") == NO_INFO == (None, None, None)
    buf = io.BytesIO()
    scene(0, size=(30, 20)).save(buf, "PNG")
    assert image_info(buf.getvalue()) == (30, 20, 1)


def test_contents_share_one_node_per_content():
    from siamese_index.duplicates.group import Contents
    from siamese_index.duplicates.scan import ScannedFile

    files = [ScannedFile(f"f{k}", 1, 0, k, sha256=sha) for k, sha in enumerate(["x", None, "y", "x"])]
    c = Contents.of(files)
    assert [f.path for f in c.files] == ["f0", "f2", "f3"]  # unreadable files are left out
    assert c.shas == ["x", "y"] and c.members == [[0, 2], [1]]
    assert c.paths(0) == ["f0", "f3"]
    assert c.lone_copies() == [([0], {})] and c.lone_copies({0}) == []


@pytest.mark.parametrize("exact_below", [10_000, 100])  # a flat index, and the IVF one
def test_candidate_pairs_against_brute_force(exact_below):
    from siamese_index.duplicates.search import build_vector_index, candidate_pairs

    rng = np.random.default_rng(3)
    x = rng.standard_normal((400, 8)).astype(np.float32)
    x[200:260] = x[:60] + rng.standard_normal((60, 8)).astype(np.float32) * 0.05  # planted close pairs
    index = build_vector_index(x, exact_below=exact_below)
    assert type(index).__name__ == ("IndexFlatL2" if exact_below > 400 else "IndexIVFFlat")
    pi, pj, pd = candidate_pairs(index, x, radius=1.0, k=10, batch=64)
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    truth = {(i, j) for i in range(400) for j in range(i + 1, 400) if d[i, j] < 1.0}
    found = dict(zip(zip(pi.tolist(), pj.tolist()), pd.tolist()))
    assert all(i < j for i, j in found) and len(found) == len(pi)  # each pair once, i < j
    assert all(abs(found[p] - d[p]) < 1e-4 for p in found)  # plain L2, not squared
    assert set(found) <= truth
    assert {(i, i + 200) for i in range(60)} <= set(found)  # every planted pair
    if exact_below > 400:
        assert set(found) == truth  # k covers every neighbour within the radius here


def test_complete_linkage_groups_are_cliques_under_the_threshold():
    rng = np.random.default_rng(5)
    pos = np.sort(rng.uniform(0, 20, 120))  # points on a line: chains everywhere
    dist = lambda i, j: float(abs(pos[i] - pos[j]))  # noqa: E731
    known = {(i, i + 1): dist(i, i + 1) for i in range(119)}  # only neighbours are known
    groups = complete_linkage(dict(known), 0.5, pair_distance=dist)
    seen: set[int] = set()
    for members, pairs in groups:
        assert members == sorted(members) and len(members) > 1
        assert not seen & set(members)
        seen |= set(members)
        assert set(pairs) == {(a, b) for a in members for b in members if a < b}
        assert all(d < 0.5 and d == pytest.approx(dist(*p)) for p, d in pairs.items())
    assert [g[0][0] for g in groups] == sorted(g[0][0] for g in groups)
    linked = {i for i, j in known if known[(i, j)] < 0.5} | {j for i, j in known if known[(i, j)] < 0.5}
    assert seen <= linked and len(seen) >= len(linked) // 2


def test_near_describe_step_vectors_per_content_and_skips(photos):
    from siamese_index.duplicates.describe import Describer
    from siamese_index.duplicates.scan import scan
    from siamese_index.storage.descriptor_cache import NoCache

    root = photos["orig"].parent.parent
    (root / "bad.png").write_text("nope")
    files = scan([root]).files
    got = Describer("near", near.VERSION, NoCache()).run(files, workers=1)
    assert len(got.vectors) == 9 and got.computed == 9 and got.cached == 0  # 11 files, 9 readable contents
    assert all(v.shape == (len(near.WINDOWS) * near.DIM,) for v in got.vectors.values())
    assert [(Path(s.path).name, s.reason) for s in got.skipped] == [("bad.png", got.skipped[0].reason)]
    assert "not a readable image" in got.skipped[0].reason
    orig = next(f for f in files if f.path == str(photos["orig"]))
    assert (orig.width, orig.height, orig.color) == (240, 200, 1)
    assert sum(f.sha256 is None for f in files) == 1


def test_results_are_frozen_and_json_comes_from_to_jsonable(photos):
    import dataclasses

    from siamese_index.duplicates.report import DuplicateGroup, Member, Skipped

    root = photos["orig"].parent.parent
    exact = dedup([root], level="exact", cache=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        exact.level = "near"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        exact.stats.groups = 0  # type: ignore[misc]
    assert isinstance(exact.groups, tuple) and isinstance(exact.skipped, tuple)
    out = exact.to_dict()
    assert list(out) == ["level", "threshold", "keep_rule", "groups", "skipped", "stats"]
    # Search stats only where a search ran, as before the stats were typed.
    assert not {"index", "candidate_pairs", "checked_pairs", "checked_from_cache"} & set(out["stats"])
    assert {"index", "candidate_pairs", "checked_pairs"} <= set(dedup([root], cache=False).to_dict()["stats"])
    assert "files" not in out and "sources" not in out  # in memory, for quarantine only
    assert exact.files[str(photos["other"])].size == photos["other"].stat().st_size
    group = DuplicateGroup("a", (Member("a", 0.0), Member("b", float("inf"))), float("nan"))
    assert group.to_dict() == {
        "keep": "a",
        "members": [{"path": "a", "distance": 0.0}, {"path": "b", "distance": None}],
        "max_distance": None,
    }
    assert group.duplicates == ("b",)
    assert Skipped("x", "why").to_dict() == {"path": "x", "reason": "why"}
    json.dumps(out, allow_nan=False)


def test_quarantine_results_are_typed_with_the_json_keys_of_before(photos, tmp_path):
    root = photos["orig"].parent.parent
    report = dedup([root], level="near", cache=False)
    moved = quarantine.move_duplicates(report, tmp_path / "q")
    assert moved.to_dict() == {
        "manifest": str(tmp_path / "q" / "manifest.json"),
        "moved": 6,
        "skipped": [],
        "bytes": sum(report.files[p].size for g in report.groups for p in g.duplicates),
    }
    undone = quarantine.undo(moved.manifest)
    assert undone.to_dict() == {"manifest": moved.manifest, "restored": 6, "already_in_place": 0, "problems": []}
    Path(report.groups[0].keep).unlink()
    deleted = quarantine.delete_duplicates(report)
    assert set(deleted.to_dict()) == {"deleted", "skipped", "bytes"}
    assert deleted.deleted == 1 and len(deleted.skipped) == len(report.groups[0].duplicates)
    assert all("no longer exists" in s.reason for s in deleted.skipped)


def test_cli_choices_are_the_librarys():
    from cli import dedup_cmds
    from siamese_index.duplicates import pipeline, report

    assert dedup_cmds.LEVELS == pipeline.LEVELS and dedup_cmds.KEEP_RULES == pipeline.KEEP_RULES
    assert dedup_cmds.REPORT_SUFFIXES == report.REPORT_SUFFIXES


def test_enrolled_near_duplicates_has_one_home():
    from siamese_index.duplicates import pipeline
    from siamese_index.index import enrollment, near_duplicates

    assert enrollment.enrolled_near_duplicates is near_duplicates.enrolled_near_duplicates
    assert not hasattr(pipeline, "enrolled_near_duplicates")  # the index never needs the dedup pipeline
    assert near_duplicates.enrolled_near_duplicates("/nonexistent-home", [], []) == []
