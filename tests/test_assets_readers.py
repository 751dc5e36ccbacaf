"""Source-format readers on tiny committed fixtures (see tests/fixtures/assets/build_fixtures.py)."""

from __future__ import annotations

import gzip
import lzma
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from deltamerge.assets import emails, fortune_files, idx, passages, rdata_db
from deltamerge.errors import DeltaMergeError

FIX = Path(__file__).parent / "fixtures" / "assets"


# ---------------------------------------------------------------- IDX
def test_idx_gzipped_images():
    x = idx.read_idx(FIX / "tiny-images-idx3-ubyte.gz")
    assert x.shape == (3, 4, 4) and x.dtype == np.uint8
    assert x[2, 3, 3] == 47 * 5


def test_idx_plain_labels_and_big_endian_floats():
    assert idx.read_idx(FIX / "tiny-labels-idx1-ubyte").tolist() == [7, 0, 3]
    floats = idx.read_idx(FIX / "tiny-floats-idx2")
    assert floats.dtype == np.float32 and floats.dtype.isnative
    assert floats.tolist() == [[1.5, -2.0]]


@pytest.mark.parametrize("data, message", [
    (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "magic"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "element type"),
    (b"\x00\x00\x08\x02\x00\x00\x00\x02", "header"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x03\x05", "data bytes"),
])
def test_idx_rejects_malformed(data, message):
    with pytest.raises(DeltaMergeError, match=message):
        idx.parse_idx(data)


# ---------------------------------------------------------------- R lazy-load DB
def test_rdb_lzma_data_frame_as_dict_of_columns():
    assert rdata_db.list_objects(FIX / "rdb" / "Lzma") == ["reviews", "words"]
    objs = rdata_db.load_objects(FIX / "rdb" / "Lzma")
    frame = objs["reviews"]
    assert list(frame) == ["product", "review", "score", "stars"]
    assert frame["review"] == ["Tasty <br />snack", "Stale and bland", "Caf\u00e9 quality, great"]
    assert frame["score"] == ["great", "other", "great"]  # factor -> level strings
    np.testing.assert_array_equal(frame["stars"], [5.0, 1.0, 4.5])
    assert objs["words"] == ["alpha", None, "gamma"]  # NA_character_ -> None


def test_rdb_zlib_character_vector_by_either_file_name():
    lines = rdata_db.load_objects(FIX / "rdb" / "Zlib.rdb", ["novel"])["novel"]
    assert lines[2:4] == ["It was a dark", "and stormy night,"]
    assert rdata_db.load_objects(FIX / "rdb" / "Zlib.rdx")["novel"] == lines


def test_rdb_unknown_object_is_a_clear_error():
    with pytest.raises(DeltaMergeError, match="no object"):
        rdata_db.load_objects(FIX / "rdb" / "Zlib", ["missing"])


def test_decompress_record_variants():
    payload = b"X\n serialized bytes"
    size = struct.pack(">I", len(payload))
    raw_lzma = lzma.compress(payload, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}])
    assert rdata_db.decompress_record(size + zlib.compress(payload), 1) == payload
    assert rdata_db.decompress_record(size + b"Z" + raw_lzma, 3) == payload
    assert rdata_db.decompress_record(size + b"0" + payload, 3) == payload
    assert rdata_db.decompress_record(payload, 0) == payload
    with pytest.raises(DeltaMergeError, match="header says"):
        rdata_db.decompress_record(struct.pack(">I", 99) + zlib.compress(payload), 1)
    with pytest.raises(DeltaMergeError, match="record type"):
        rdata_db.decompress_record(size + b"Q" + payload, 3)
    with pytest.raises(DeltaMergeError, match="corrupt"):
        rdata_db.decompress_record(size + b"Z" + b"garbage!", 3)


def test_rds_gzip_index_parses():
    variables, compressed = rdata_db.read_index(FIX / "rdb" / "Lzma.rdx")
    assert compressed == 3 and set(variables) == {"reviews", "words"}
    assert gzip.decompress((FIX / "rdb" / "Lzma.rdx").read_bytes())[:2] == b"X\n"


# ---------------------------------------------------------------- emails
def _mail(name: str) -> bytes:
    return (FIX / "emails" / name).read_bytes()


def test_plain_email_subject_and_body():
    text = emails.email_to_text(_mail("plain.eml"))
    assert text.startswith("Lunch on Friday?\n\nHi Bob,")
    assert "Are we still on" in text  # spaces collapsed


def test_base64_body_and_encoded_subject():
    text = emails.email_to_text(_mail("base64.eml"))
    assert text.splitlines()[0] == "Gro\u00dfe Rabatte"
    assert "Caf\u00e9 prices fell by 50% \u2014 order now!" in text


def test_quoted_printable_latin1_soft_breaks_joined():
    text = emails.email_to_text(_mail("qp.eml"))
    assert "Na\u00efve r\u00e9sum\u00e9 tips" in text
    assert "exceeds seventy six characters." in text and "=\n" not in text


def test_html_only_email_is_stripped_and_attachment_ignored():
    text = emails.email_to_text(_mail("html.eml"))
    assert "Click here & claim your prize" in text.replace(" !", "!")
    for junk in ("<", "color: red", "var x", "AAECAwQ"):
        assert junk not in text


def test_email_length_cap():
    assert len(emails.email_to_text(_mail("qp.eml"), max_chars=20)) <= 20


# ---------------------------------------------------------------- fortunes
def test_fortune_dir_skips_dat_and_offensive():
    topics = fortune_files.read_fortune_dir(FIX / "fortunes")
    assert set(topics) == {"love", "science"}
    assert topics["science"] == ["E = mc^2", "The universe is\n  big.", "Last one, no trailing separator"]
    assert topics["love"] == ["All you need is love."]


# ---------------------------------------------------------------- passages
def test_paragraphs_join_lines_and_drop_headings():
    lines = rdata_db.load_objects(FIX / "rdb" / "Zlib")["novel"]
    assert passages.paragraphs_from_lines(lines, min_words=2) == [
        "It was a dark and stormy night, said the narrator firmly.", "The End"]
    assert passages.paragraphs_from_lines(["CHAPTER XII", "", "VOLUME II", "", "IV."], min_words=1) == []


def test_chunks_respect_word_bounds():
    sentence = "This sentence has exactly eight words in it. "
    chunks = passages.chunk_words(sentence * 40, min_words=20, max_words=100)
    assert chunks and all(20 <= len(c.split()) <= 100 for c in chunks)
    assert all(c.endswith(".") for c in chunks)
    assert passages.passages(["too short", "word " * 250]) and all(
        20 <= len(p.split()) <= 100 for p in passages.passages(["too short", "word " * 250]))
