import gzip
import io

import pytest

from seq2seq.errors import DataError
from seq2seq.files.lines import ReadStats, chunks, clean_output, iter_lines, read_lines


def test_lines_split_on_newline_only():
    raw = "a\u2028b\nc\x0cd\r\n\ne\x85f".encode("utf-8")
    stats = ReadStats()
    assert list(iter_lines(io.BytesIO(raw), stats)) == ["a\u2028b", "c\x0cd", "", "e\x85f"]
    assert stats.lines == 4


def test_invalid_utf8_is_replaced_and_counted():
    stats = ReadStats()
    lines = list(iter_lines(io.BytesIO(b"ok\n\xff\xfe bad\nfine\n"), stats))
    assert lines[0] == "ok" and lines[2] == "fine"
    assert "\ufffd" in lines[1]
    assert stats.invalid_utf8 == 1


def test_clean_output_never_breaks_a_line():
    text = clean_output("a\nb\rc\u2028d\x85e\x0bf\tg")
    assert text.splitlines() == [text]
    assert "\t" in text  # tabs are kept


def test_read_lines_plain_and_gzip(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"x\ny\n")
    with gzip.open(tmp_path / "a.txt.gz", "wb") as f:
        f.write(b"x\ny\n")
    assert read_lines(tmp_path / "a.txt")[0] == read_lines(tmp_path / "a.txt.gz")[0] == ["x", "y"]
    with pytest.raises(DataError, match="no such file"):
        read_lines(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="is a directory"):
        read_lines(tmp_path)


def test_chunks_do_not_lose_lines():
    assert list(chunks(iter("abcde"), 2)) == [["a", "b"], ["c", "d"], ["e"]]


def test_a_leading_byte_order_mark_is_dropped():
    stats = ReadStats()
    assert list(iter_lines(io.BytesIO(b"\xef\xbb\xbfhello\n\xef\xbb\xbfkept\n"), stats)) == ["hello", "\ufeffkept"]
