"""The Qt .rcc reader against archives written here by an independent writer following Qt's documented layout."""

import struct

import pytest

from broad_fixtures import write_rcc
from deltamerge.assets import qt_rcc
from deltamerge.errors import DeltaMergeError

FILES = {
    "a/b/photo.webp": b"\x00\x01binary payload" * 50,
    "a/b/notes.txt": "héllo wörld".encode(),
    "a/c/deep/x.png": bytes(range(256)) * 3,
    "top.qml": b"Item {}",
}


@pytest.mark.parametrize("version", [1, 2, 3])
def test_reads_every_file_of_each_format_version(version):
    blob = write_rcc(FILES, version=version)
    out = qt_rcc.read_rcc(blob)
    assert out.files == FILES and out.skipped_zstd == []


def test_zlib_entry_with_size_prefix_is_inflated():
    blob = write_rcc(FILES, compress={"a/b/photo.webp", "top.qml"})
    assert FILES["a/b/photo.webp"] not in blob  # really stored compressed
    assert qt_rcc.read_rcc(blob).files == FILES


def test_zstd_entries_are_skipped_and_counted_without_a_decoder(monkeypatch):
    monkeypatch.setattr(qt_rcc, "_zstd_decompress", lambda data: None)
    out = qt_rcc.read_rcc(write_rcc(FILES, zstd={"a/c/deep/x.png"}))
    assert out.skipped_zstd == ["a/c/deep/x.png"]
    assert set(out.files) == set(FILES) - {"a/c/deep/x.png"}


def test_zstd_entries_are_decoded_when_a_decoder_exists(monkeypatch):
    monkeypatch.setattr(qt_rcc, "_zstd_decompress", lambda data: data[::-1])
    out = qt_rcc.read_rcc(write_rcc({"z.bin": b"abc"}, zstd={"z.bin"}))
    assert out.files == {"z.bin": b"cba"} and out.skipped_zstd == []


def test_bad_size_prefix_and_garbage_are_errors():
    blob = bytearray(write_rcc({"f.txt": b"x" * 100}, compress={"f.txt"}))
    _, _, data_off, _ = struct.unpack_from(">4I", blob, 4)
    blob[data_off + 4:data_off + 8] = struct.pack(">I", 99)  # Qt's uncompressed-size prefix says 99, not 100
    with pytest.raises(DeltaMergeError, match="inflates to 100 bytes"):
        qt_rcc.read_rcc(bytes(blob))
    with pytest.raises(DeltaMergeError, match="not a Qt resource archive"):
        qt_rcc.read_rcc(b"PK\x03\x04" + bytes(40))
    with pytest.raises(DeltaMergeError, match="truncated|past"):
        qt_rcc.read_rcc(write_rcc(FILES)[:60])
    bad_version = bytearray(write_rcc(FILES))
    bad_version[4:8] = struct.pack(">I", 9)
    with pytest.raises(DeltaMergeError, match="version 9"):
        qt_rcc.read_rcc(bytes(bad_version))
