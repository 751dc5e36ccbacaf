"""Issue 25's assets on tiny fake packages, through the real fetch -> convert -> load -> suite path: the broad photo
pool (filter, manifest, content hash) and the natural-colour tasks of vision-mini6."""

import json

import numpy as np
import pytest
import torch

from broad_fixtures import fake_broad_packages, fake_emoji, fake_openclipart
from deltamerge import assets
from deltamerge.assets import cache, convert_broad as cb, registry, store
from deltamerge.assets.sources import Fetched
from deltamerge.errors import DeltaMergeError
from deltamerge.suites import get_suite
from deltamerge.suites import vision_colour, vision_reference as vr


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def fake_sources(tmp_path, monkeypatch, tmp_cache):
    """fetch_source hands out the fake package trees instead of downloading."""
    roots = dict(zip(cb.BROAD_PACKAGES, fake_broad_packages(tmp_path / "broad"), strict=True))
    roots["openclipart-png"] = fake_openclipart(tmp_path / "clip")
    roots["emoji-datasource-google"] = fake_emoji(tmp_path / "emoji")
    monkeypatch.setattr(store, "fetch_source", lambda source, workdir, quiet=True: Fetched(
        roots[source.package], source.version, 1))
    vision_colour._colour.cache_clear()
    yield roots
    vision_colour._colour.cache_clear()


def test_broad_photos_keeps_photos_with_manifest_and_hash(fake_sources):
    folder = assets.fetch("broad-photos", progress=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    rows = manifest["images"]
    paths = [r["path"] for r in rows]
    assert [r["package"] for r in rows] == ["tuxpaint-stamps-default"] * 2 + ["gcompris-qt-data"] * 2 + \
        ["scratch", "plasma-workspace-wallpapers"]
    assert paths[0].endswith("stamps/animals/fox.png") and paths[1].endswith("food/apple.png")  # copy dropped
    assert paths[2] == "usr/share/gcompris-qt/rcc/zoo.rcc:gcompris/src/activities/zoo/resource/lion.webp"
    assert paths[3].endswith("resource/owl.png")  # zlib-compressed inside the archive
    assert paths[5].endswith("Hill/contents/images/1280x960.jpg")  # one size per wallpaper
    assert not any("paintings.rcc" in p or "house" in p or "sun" in p or "Blobs" in p for p in paths)
    # licence and attribution from each package's DEP-5 copyright file: the special stanza wins where it matches
    assert [r["licence"] for r in rows] == ["CC-BY-SA-3.0", "GPL-2+", "CC-BY-SA-3.0", "CC-BY-SA-3.0",
                                            "CC-BY-SA-3.0", "GPL-2+"]
    assert rows[0]["attribution"] == "2021 Photo Person" and rows[1]["attribution"] == "2020 Main Author"
    per = manifest["summary"]["per_package"]
    assert per["tuxpaint-stamps-default"] == {"candidates": 4, "photos": 2, "duplicates": 1, "unreadable": 0}
    assert per["gcompris-qt-data"]["candidates"] == 3  # the .qml is not an image; paintings.rcc is skipped
    photos = assets.broad_photos()
    assert len(photos) == 6 and all(p.dtype == np.uint8 and p.ndim == 3 and p.shape[2] == 3 for p in photos)
    assert all(max(p.shape[:2]) <= cb.MAX_SIDE for p in photos)
    fox = photos[0]  # the cut-out is cropped to its visible box (rows 16:-16, columns 21:-22 of 96 x 128)
    assert fox.shape[:2] == (64, 85) and (fox[0] != 128).any()
    data = cache.read_npz(folder / "images.npz")
    assert manifest["sha256"] == cb.content_hash(data, rows)
    assert store.read_marker(folder)["info"]["sha256"] == manifest["sha256"]
    # the same packages give the same hash; a changed image changes it
    again = assets.fetch("broad-photos", progress=False, force=True)
    assert json.loads((again / "manifest.json").read_text())["sha256"] == manifest["sha256"]
    data["img00000"] = data["img00000"].copy()
    data["img00000"][0, 0, 0] ^= 1
    assert cb.content_hash(data, rows) != manifest["sha256"]


def test_broad_photos_reference_option(fake_sources):
    assets.fetch("broad-photos", progress=False)
    opts = vr.VisionMiniOptions(reference=["broad-photos"])
    ref = vr.build_reference(opts, 12, 16, [])
    assert ref.shape == (12, 3, 16, 16) and ref.dtype == torch.uint8
    assert "Debian packages" in opts.describe()
    assert get_suite("vision-mini", {"reference": ["photos", "broad-photos"]}).reference_description != \
        get_suite("vision-mini").reference_description


def test_colour_tasks_through_the_suite(fake_sources):
    for name in ("openclipart", "emoji"):
        assets.fetch(name, progress=False)
    clip = assets.openclipart()
    assert clip.classes == list(cb.OPENCLIPART_CLASSES) and clip.x.shape[1:] == (64, 64, 3)
    assert np.bincount(clip.y).tolist() == [6] * 10  # the symlinked copy is skipped
    emo = assets.emoji()
    assert emo.classes == ["Animals & Nature", "Food & Drink", "Smileys & Emotion"]  # flags, components dropped
    assert len(emo.y) == 18
    rows = json.loads((assets.path("emoji") / "manifest.json").read_text())["images"]
    assert {r["licence"] for r in rows} == {"Apache-2.0 (Noto Emoji images)"} and rows[0]["class"]
    suite = get_suite("vision-mini6")
    assert suite.task_names[-2:] == ["openclipart", "emoji"] and len(suite.task_names) == 6
    task = suite.load_task("openclipart", "quick")
    assert task.train.inputs.shape[1:] == (3, 32, 32) and task.num_classes == 10
    n = len(task.train) + len(task.val) + len(task.test)
    assert n == 60 and len(task.test) == 12
    idx = set(map(tuple, task.train.inputs.flatten(1)[:, ::7].tolist()))
    assert not idx & set(map(tuple, task.test.inputs.flatten(1)[:, ::7].tolist()))  # disjoint splits


def test_missing_colour_asset_names_the_fetch_command(tmp_cache):
    with pytest.raises(DeltaMergeError, match="deltamerge assets fetch vision-mini6"):
        assets.openclipart()
    with pytest.raises(DeltaMergeError, match="deltamerge assets fetch vision-mini`"):
        assets.broad_photos()


def test_optional_assets_are_fetched_by_the_suite_command_only():
    assert "broad-photos" not in registry.suite_assets("vision-mini")
    assert set(registry.suite_assets("vision-mini", optional=True)) >= {"broad-photos", "openclipart", "emoji"}
    assert set(registry.suite_assets("vision-mini6")) >= {"openclipart", "emoji"}


def test_cli_fetch_required_only_skips_every_optional_asset(monkeypatch):
    from typer.testing import CliRunner

    from deltamerge.cli import app

    fetched, suites = [], []
    monkeypatch.setattr(assets, "fetch", lambda name, **kw: fetched.append(name))
    monkeypatch.setattr(assets, "fetch_suite", lambda suite, **kw: suites.append((suite, kw)))
    r = CliRunner().invoke(app, ["assets", "fetch", "--required-only"])
    assert r.exit_code == 0, r.output
    assert not {"broad-photos", "openclipart", "emoji"} & set(fetched)
    assert {"efficientnet-lite0", "minilm", "smollm2"} <= set(fetched)
    fetched.clear()
    assert CliRunner().invoke(app, ["assets", "fetch"]).exit_code == 0
    assert {"broad-photos", "openclipart", "emoji"} <= set(fetched)
    assert CliRunner().invoke(app, ["assets", "fetch", "vision-mini"]).exit_code == 0
    assert suites == [("vision-mini", {"force": False, "optional": True})]


def test_cli_assets_list_prints_every_asset(tmp_cache):
    from typer.testing import CliRunner

    from deltamerge.cli import app

    r = CliRunner().invoke(app, ["assets", "list"])
    assert r.exit_code == 0, r.output  # main printed "internal error (AttributeError ...)" here
    lines = r.output.splitlines()[2:]  # below the markdown table's header and separator
    assert len(lines) == len(registry.ASSETS)
    broad = next(line for line in lines if line.startswith("| broad-photos | "))
    assert broad.startswith("| broad-photos | vision-mini, vision-mini6 | no |")
