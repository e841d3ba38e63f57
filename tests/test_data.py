"""Corpus loading in every spec format, tokenizing through datasets.map, length filtering."""

import gzip
import json
import os
import re

import datasets
import pytest

from seq2seq.data.corpora import load_corpus
from seq2seq.data.corpus_specs import resolve_corpus_spec
from seq2seq.data.encode import LengthFilterReport, encode_corpus, filter_pairs, token_lengths
from seq2seq.data.tokenizer import EOS_ID, train_tokenizer
from seq2seq.errors import DataError

pytestmark = pytest.mark.usefixtures("hf_cache")

# Pairs whose text would break a careless reader: characters str.splitlines
# splits on, a "\r" inside a line, a tab in JSON, an empty side.
PAIRS = [
    ("A dog runs.", "Ein Hund läuft."),
    ("line\u2028separator", "Zeilen\u2028trenner"),
    ("form\x0cfeed", "Seiten\x0cvorschub"),
    ("next\x85line", "nächste\x85Zeile"),
    ("carriage\rreturn", "Wagen\rrücklauf"),
    ("", "nur Ziel"),
    ("Grüße, 你好 😀", "Grüße"),
]
PLAIN_PAIRS = [(s, t) for s, t in PAIRS if "\t" not in s + t]


def as_pairs(corpus: datasets.Dataset) -> list[tuple[str, str]]:
    assert corpus.column_names == ["src", "tgt"]
    assert corpus.features == datasets.Features({"src": datasets.Value("string"),
                                                 "tgt": datasets.Value("string")})
    return list(zip(corpus["src"], corpus["tgt"]))


def write_lines(path, lines, *, ending=b"\n"):
    data = b"".join(line.encode("utf-8") + ending for line in lines)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def write_jsonl(path, rows):
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def nested(pairs):
    return {"translation": [{"en": s, "de": t} for s, t in pairs]}


def top_level(pairs):
    return {"en": [s for s, _ in pairs], "de": [t for _, t in pairs], "id": list(range(len(pairs)))}


# Each writer puts PAIRS (en-de) on disk in one format and returns the spec.

def plain(tmp_path):
    write_lines(tmp_path / "corpus.en", [s for s, _ in PAIRS])
    write_lines(tmp_path / "corpus.de", [t for _, t in PAIRS], ending=b"\r\n")
    return str(tmp_path / "corpus")


def gzipped(tmp_path):
    write_lines(tmp_path / "corpus.en.gz", [s for s, _ in PAIRS])
    write_lines(tmp_path / "corpus.de", [t for _, t in PAIRS])
    return str(tmp_path / "corpus")


def tsv(tmp_path):
    write_lines(tmp_path / "corpus.tsv", [f"{s}\t{t}" for s, t in PAIRS])
    return str(tmp_path / "corpus.tsv")


def tsv_gz(tmp_path):
    write_lines(tmp_path / "corpus.tsv.gz", [f"{s}\t{t}" for s, t in PAIRS])
    return str(tmp_path / "corpus.tsv.gz")


def jsonl_nested(tmp_path):
    write_jsonl(tmp_path / "corpus.jsonl", [{"translation": {"de": t, "en": s}} for s, t in PAIRS])
    return str(tmp_path / "corpus.jsonl")


def jsonl_top_level_gz(tmp_path):
    rows = [{"en": s, "de": t, "id": i} for i, (s, t) in enumerate(PAIRS)]
    write_jsonl(tmp_path / "corpus.jsonl.gz", rows)
    return str(tmp_path / "corpus.jsonl.gz")


def json_array(tmp_path):
    rows = [{"translation": {"en": s, "de": t}} for s, t in PAIRS]
    (tmp_path / "corpus.json").write_text(json.dumps(rows), encoding="utf-8")
    return str(tmp_path / "corpus.json")


def parquet_nested(tmp_path):
    datasets.Dataset.from_dict(nested(PAIRS)).to_parquet(str(tmp_path / "corpus.parquet"))
    return str(tmp_path / "corpus.parquet")


def parquet_top_level(tmp_path):
    datasets.Dataset.from_dict(top_level(PAIRS)).to_parquet(str(tmp_path / "corpus.parquet"))
    return str(tmp_path / "corpus.parquet")


def saved_dataset(tmp_path):
    datasets.Dataset.from_dict(top_level(PAIRS)).save_to_disk(str(tmp_path / "saved"))
    return str(tmp_path / "saved")


def saved_dataset_dict(tmp_path):
    other = datasets.Dataset.from_dict(nested([("x", "y")]))
    datasets.DatasetDict({"train": other, "validation": datasets.Dataset.from_dict(nested(PAIRS))}) \
        .save_to_disk(str(tmp_path / "saved"))
    return str(tmp_path / "saved") + "#validation"


def hub_local_folder(tmp_path):
    folder = tmp_path / "my_hub_dataset" / "data"
    folder.mkdir(parents=True)
    datasets.Dataset.from_dict(nested([("x", "y")])).to_parquet(str(folder / "train-0-of-1.parquet"))
    datasets.Dataset.from_dict(nested(PAIRS)).to_parquet(str(folder / "test-0-of-1.parquet"))
    return f"hub:{tmp_path / 'my_hub_dataset'}#test"


@pytest.mark.parametrize("write", [plain, gzipped, tsv, tsv_gz, jsonl_nested, jsonl_top_level_gz,
                                   json_array, parquet_nested, parquet_top_level, saved_dataset,
                                   saved_dataset_dict, hub_local_folder])
def test_every_format_loads_the_same_pairs(tmp_path, write):
    assert as_pairs(load_corpus(write(tmp_path), "en", "de")) == PAIRS


@pytest.mark.parametrize("write", [plain, jsonl_nested, parquet_top_level])
def test_languages_pick_and_order_the_sides(tmp_path, write):
    assert as_pairs(load_corpus(write(tmp_path), "de", "en")) == [(t, s) for s, t in PAIRS]


def test_cache_dir_holds_the_arrow_files(tmp_path, hf_cache):
    corpus = load_corpus(plain(tmp_path), "en", "de", cache_dir=str(tmp_path / "cache"))
    assert all(f["filename"].startswith(str(tmp_path / "cache")) for f in corpus.cache_files)
    assert not hf_cache.exists()


def test_bundled_multi30k(multi30k):
    val = load_corpus(str(multi30k / "val"), "en", "de")
    assert len(val) == 1014
    with gzip.open(multi30k / "val.en.gz", "rt", encoding="utf-8") as en, \
            gzip.open(multi30k / "val.de.gz", "rt", encoding="utf-8") as de:
        assert val[0] == {"src": en.readline().rstrip("\n"), "tgt": de.readline().rstrip("\n")}
    assert len(load_corpus(str(multi30k / "train"), "fr", "cs")) == 29000


def test_unusual_line_breaks_stay_inside_their_line(tmp_path):
    (tmp_path / "c.en").write_bytes(
        b"one\xe2\x80\xa8still one\r\ntwo\x0ctwo\rtwo\nthree\x1c\x1d\x1e\nfour")
    (tmp_path / "c.de").write_bytes(b"eins\neins\xc2\x85zwei\ndrei\r\nvier\n")
    corpus = load_corpus(str(tmp_path / "c"), "en", "de")
    assert as_pairs(corpus) == [("one\u2028still one", "eins"), ("two\x0ctwo\rtwo", "eins\x85zwei"),
                                ("three\x1c\x1d\x1e", "drei"), ("four", "vier")]


def test_byte_order_mark_is_dropped(tmp_path):
    (tmp_path / "c.en").write_bytes(b"\xef\xbb\xbfHello\n")
    (tmp_path / "c.de").write_bytes(b"Hallo\n")
    assert as_pairs(load_corpus(str(tmp_path / "c"), "en", "de")) == [("Hello", "Hallo")]


@pytest.mark.parametrize("en_lines, de_lines", [(3, 2), (2, 3), (0, 1)])
def test_line_count_mismatch_names_both_files_and_counts(tmp_path, en_lines, de_lines):
    write_lines(tmp_path / "c.en.gz", [f"s{i}" for i in range(en_lines)])
    write_lines(tmp_path / "c.de", [f"t{i}" for i in range(de_lines)])
    message = f"^{tmp_path}/c.en.gz has {en_lines} lines but {tmp_path}/c.de has {de_lines}$"
    for _ in range(2):  # a failed generation must not leave a cache entry behind
        with pytest.raises(DataError, match=message):
            load_corpus(str(tmp_path / "c"), "en", "de")


def test_edited_file_is_read_again(tmp_path):
    spec = plain(tmp_path)
    load_corpus(spec, "en", "de")
    write_lines(tmp_path / "corpus.en", ["changed"] * len(PAIRS))
    assert load_corpus(spec, "en", "de")["src"][0] == "changed"


@pytest.mark.parametrize("name", ["c.en", "c.en.gz", "c.tsv"])
def test_invalid_utf8_names_the_file_and_line(tmp_path, name):
    data = b"fine\tok\nstill fine\tok\nbad \xff byte\tok\n"
    (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    write_lines(tmp_path / "c.de", ["a", "b", "c"])
    spec = str(tmp_path / ("c.tsv" if name == "c.tsv" else "c"))
    with pytest.raises(DataError, match=f"^{tmp_path / name}: line 3 is not valid UTF-8 "):
        load_corpus(spec, "en", "de")


def test_corrupt_gzip(tmp_path):
    (tmp_path / "c.en.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    write_lines(tmp_path / "c.de", ["a"])
    with pytest.raises(DataError, match=f"^{tmp_path}/c.en.gz: cannot be read "):
        load_corpus(str(tmp_path / "c"), "en", "de")


def test_tsv_line_with_wrong_field_count(tmp_path):
    write_lines(tmp_path / "c.tsv", ["a\tb", "c\td", "e\tf\tg", "h\ti"])
    with pytest.raises(DataError, match=r"c.tsv: line 3 has 3 tab-separated fields, expected 2"):
        load_corpus(str(tmp_path / "c.tsv"), "en", "de")
    write_lines(tmp_path / "d.tsv", ["no tab here"])
    with pytest.raises(DataError, match=r"d.tsv: line 1 has 1 tab-separated fields"):
        load_corpus(str(tmp_path / "d.tsv"), "en", "de")


def test_jsonl_row_without_a_language_names_its_line(tmp_path):
    path = tmp_path / "c.jsonl"
    rows = [{"translation": {"en": "a", "de": "b"}}, {"translation": {"en": "c"}}]
    # The blank line is skipped by the JSON reader, so row 2 sits on line 3.
    path.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"c.jsonl: line 3 has no 'de' text \(it has en\)"):
        load_corpus(str(path), "en", "de")
    # Rows with differing keys, without the blank line, come back JSON-typed: another path.
    write_jsonl(path, [rows[0], {"translation": {"en": "c", "fr": "d"}}, rows[0]])
    with pytest.raises(DataError, match=r"c.jsonl: line 2 has no 'de' text \(it has en, fr\)"):
        load_corpus(str(path), "en", "de")
    write_jsonl(path, [{"en": "a", "de": "b"}, {"en": "c", "de": "d"}, {"en": "e"}])
    with pytest.raises(DataError, match=r"c.jsonl: line 3 has no 'de' text$"):
        load_corpus(str(path), "en", "de")


def test_saved_dataset_row_without_text(tmp_path):
    datasets.Dataset.from_dict({"en": ["a", "b"], "de": ["c", None]}).save_to_disk(str(tmp_path / "s"))
    with pytest.raises(DataError, match=r"s: row 2 has no 'de' text"):
        load_corpus(str(tmp_path / "s"), "en", "de")


@pytest.mark.parametrize("line, problem", [
    (b'{"en": ', r"is not valid JSON \(Expecting value at column 8\)"),
    (b'{"en": "a", "de": "b"} x', r"is not valid JSON \(Extra data at column 24\)"),
    (b'"just text"', r"is a string, expected a JSON object"),
    (b"[1, 2]", r"is a list, expected a JSON object"),
    (b'{"en": "caf\xe9", "de": "b"}', r"is not valid UTF-8 \(its 'en' text, byte 4: unexpected end of data\)"),
])
def test_malformed_json_line_names_its_line(tmp_path, line, problem):
    good = b'{"en": "a", "de": "b"}\n'
    (tmp_path / "pairs.jsonl").write_bytes(good + good + line + b"\n" + good)
    with pytest.raises(DataError, match=f"^{re.escape(str(tmp_path / 'pairs.jsonl'))}: line 3 {problem}$"):
        load_corpus(str(tmp_path / "pairs.jsonl"), "en", "de")


# Values that are not text, in both JSON layouts, and what the message calls them.
NOT_TEXT = [
    ({"translation": {"en": ["a"], "de": "A"}}, r'a list as its \'en\' value, not text: \["a"\]'),
    ({"translation": {"en": 3, "de": "A"}}, r"a number as its 'en' value, not text: 3"),
    ({"translation": {"en": {"x": 1}, "de": "A"}}, r'an object as its \'en\' value, not text: \{"x": 1\}'),
    ({"translation": {"en": "a", "de": True}}, r"a boolean as its 'de' value, not text: true"),
    ({"en": 3, "de": "A"}, r"a number as its 'en' value, not text: 3"),
    ({"en": ["a"], "de": "x"}, r'a list as its \'en\' value, not text: \["a"\]'),
    ({"en": {"x": 1}, "de": "x"}, r'an object as its \'en\' value, not text: \{"x": 1\}'),
    ({"en": "a", "de": 1.5}, r"a number as its 'de' value, not text: 1.5"),
]

NOT_TEXT_IDS = [json.dumps(bad, separators=(",", ":")) for bad, _ in NOT_TEXT]


@pytest.mark.parametrize("bad, message", NOT_TEXT, ids=NOT_TEXT_IDS)
@pytest.mark.parametrize("bad_line", [2, 3])
def test_jsonl_value_that_is_not_text_names_its_line(tmp_path, bad, message, bad_line):
    # datasets gives such a column a JSON type (strings on the other lines).
    good = ({"translation": {"en": "a", "de": "A"}} if "translation" in bad else {"en": "a", "de": "A"})
    rows = [good] * 4
    rows[bad_line - 1] = bad
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(DataError, match=f"^{re.escape(str(tmp_path / 'pairs.jsonl'))}: "
                                        f"line {bad_line} has {message}$"):
        load_corpus(str(tmp_path / "pairs.jsonl"), "en", "de")


@pytest.mark.parametrize("bad, message", NOT_TEXT, ids=NOT_TEXT_IDS)
def test_jsonl_where_every_value_is_not_text(tmp_path, bad, message):
    # The column is then a list, number, bool or struct column, not a JSON-typed one.
    write_jsonl(tmp_path / "pairs.jsonl", [bad] * 3)
    with pytest.raises(DataError, match=f"^{re.escape(str(tmp_path / 'pairs.jsonl'))}: line 1 has {message}$"):
        load_corpus(str(tmp_path / "pairs.jsonl"), "en", "de")


def test_value_that_is_not_text_in_other_layouts(tmp_path):
    # Rows with differing keys make the whole `translation` column JSON-typed.
    write_jsonl(tmp_path / "c.jsonl", [{"translation": {"en": "a", "de": "A"}},
                                       {"translation": {"en": "b", "de": ["B"], "fr": "b"}}])
    with pytest.raises(DataError, match=r"c.jsonl: line 2 has a list as its 'de' value, not text: \[\"B\"\]$"):
        load_corpus(str(tmp_path / "c.jsonl"), "en", "de")
    write_jsonl(tmp_path / "c.jsonl", [{"translation": {"en": "a", "de": "A"}}, {"translation": "a A"}])
    with pytest.raises(DataError, match=r"c.jsonl: line 2 has a string as its 'translation' value, "
                                        r"expected an object with 'en' and 'de' text$"):
        load_corpus(str(tmp_path / "c.jsonl"), "en", "de")
    # A blank line before a mixed-type value makes datasets' json builder fail
    # outright; the line is found all the same.
    (tmp_path / "c.jsonl").write_text('{"en": "a", "de": "A"}\n\n\n{"en": 3, "de": "A"}\n')
    with pytest.raises(DataError, match=r"c.jsonl: line 4 has a number as its 'en' value, not text: 3$"):
        load_corpus(str(tmp_path / "c.jsonl"), "en", "de")
    # Without lines to count, rows are counted.
    (tmp_path / "c.json").write_text(json.dumps([{"en": "a", "de": "A"}, {"en": [1], "de": "B"}]))
    with pytest.raises(DataError, match=r"c.json: row 2 has a list as its 'en' value, not text: \[1\]$"):
        load_corpus(str(tmp_path / "c.json"), "en", "de")
    datasets.Dataset.from_dict({"en": [1, 2], "de": ["a", "b"]}).to_parquet(str(tmp_path / "c.parquet"))
    with pytest.raises(DataError, match=r"c.parquet: row 1 has a number as its 'en' value, not text: 1$"):
        load_corpus(str(tmp_path / "c.parquet"), "en", "de")


def test_text_that_looks_like_json_is_text(tmp_path):
    pairs = [("3", "[1]"), ("true", '{"a": 1}'), ("-1.5e3", "null"), ("[Applause]", "[Beifall]")]
    write_jsonl(tmp_path / "c.jsonl", [{"en": s, "de": t} for s, t in pairs])
    assert as_pairs(load_corpus(str(tmp_path / "c.jsonl"), "en", "de")) == pairs


def test_value_that_is_not_text_after_the_first_block(tmp_path):
    # datasets reads JSON lines in blocks of 10 MB, types the columns from the
    # first block and turns a later list or number into its JSON text.
    filler = json.dumps({"translation": {"en": "x" * 100, "de": "y" * 100}}) + "\n"
    count = (11 << 20) // len(filler)
    rows = [{"translation": {"en": "[1]", "de": "3"}}, {"translation": {"en": [1], "de": "A"}}]
    (tmp_path / "c.jsonl").write_text(filler * count + "".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DataError, match=f"c.jsonl: line {count + 2} has a list as its 'en' value, "
                                        r"not text: \[1\]$"):
        load_corpus(str(tmp_path / "c.jsonl"), "en", "de")


def test_json_typed_column_of_strings_is_text(tmp_path):
    features = datasets.Features({"en": datasets.Json(), "de": datasets.Value("string")})
    datasets.Dataset.from_dict({"en": ["a", "b"], "de": ["A", "B"]}, features=features) \
        .save_to_disk(str(tmp_path / "s"))
    assert as_pairs(load_corpus(str(tmp_path / "s"), "en", "de")) == [("a", "A"), ("b", "B")]
    datasets.Dataset.from_dict({"en": ["a", 5], "de": ["A", "B"]}, features=features) \
        .save_to_disk(str(tmp_path / "t"))
    with pytest.raises(DataError, match=r"t: row 2 has a number as its 'en' value, not text: 5$"):
        load_corpus(str(tmp_path / "t"), "en", "de")


@pytest.mark.parametrize("files", [{"c.en": b"", "c.de": b""}, {"c.tsv": b""}, {"c.jsonl": b""},
                                   {"c.jsonl.gz": gzip.compress(b"")}])
def test_empty_corpus(tmp_path, files):
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    spec = str(tmp_path / ("c" if "c.en" in files else next(iter(files))))
    with pytest.raises(DataError, match=r"empty$"):
        load_corpus(spec, "en", "de")


def test_corpus_of_empty_lines(tmp_path):
    write_lines(tmp_path / "c.en", ["", "  ", "\t"])
    write_lines(tmp_path / "c.de", ["", "", " "])
    with pytest.raises(DataError, match=r"c has no usable text: all 3 pairs have an empty side"):
        load_corpus(str(tmp_path / "c"), "en", "de")
    write_jsonl(tmp_path / "c.jsonl", [{"en": "text", "de": ""}, {"en": "", "de": "Text"}])
    with pytest.raises(DataError, match=r"no usable text: all 2 pairs have an empty side"):
        load_corpus(str(tmp_path / "c.jsonl"), "en", "de")


def test_unknown_language(tmp_path, multi30k):
    with pytest.raises(DataError, match=r"looked for .*val.xx, .*val.xx.gz\); languages found for this "
                                        r"prefix: cs, de, en, fr$"):
        load_corpus(str(multi30k / "val"), "en", "xx")
    with pytest.raises(DataError, match=r"has no 'fr' translations; its languages are de, en$"):
        load_corpus(jsonl_nested(tmp_path), "fr", "de")
    with pytest.raises(DataError, match=r"has no column 'fr' and no 'translation' column; "
                                        r"its columns are en, de, id$"):
        load_corpus(parquet_top_level(tmp_path), "en", "fr")
    with pytest.raises(DataError, match="source and target language are both 'en'"):
        load_corpus(plain(tmp_path), "en", "en")


def test_missing_corpus(tmp_path):
    with pytest.raises(DataError, match=rf"^no such corpus: {tmp_path}/nope "
                                        rf"\(looked for {tmp_path}/nope.en, {tmp_path}/nope.en.gz\)$"):
        load_corpus(str(tmp_path / "nope"), "en", "de")
    with pytest.raises(DataError, match="no such corpus file: .*nope.jsonl"):
        load_corpus(str(tmp_path / "nope.jsonl"), "en", "de")
    with pytest.raises(DataError, match="the corpus spec is empty"):
        load_corpus("", "en", "de")


def test_folder_where_a_file_is_expected(tmp_path):
    (tmp_path / "c.tsv").mkdir()
    with pytest.raises(DataError, match=r"c.tsv is a folder, expected a corpus file"):
        load_corpus(str(tmp_path / "c.tsv"), "en", "de")
    (tmp_path / "c.en").mkdir()
    with pytest.raises(DataError, match=r"c.en is a folder, expected a text file"):
        load_corpus(str(tmp_path / "c"), "en", "de")
    (tmp_path / "plain_folder").mkdir()
    with pytest.raises(DataError, match=r"plain_folder is a folder but not a dataset saved with "):
        load_corpus(str(tmp_path / "plain_folder"), "en", "de")


def test_both_plain_and_gzip_file_is_ambiguous(tmp_path):
    write_lines(tmp_path / "c.en", ["a"])
    write_lines(tmp_path / "c.en.gz", ["a"])
    with pytest.raises(DataError, match=r"both .*c.en and .*c.en.gz exist"):
        load_corpus(str(tmp_path / "c"), "en", "de")


def test_unknown_file_format(tmp_path):
    write_lines(tmp_path / "c.csv", ["a,b"])
    with pytest.raises(DataError, match=r"c.csv: unknown corpus format"):
        load_corpus(str(tmp_path / "c.csv"), "en", "de")


def test_dataset_dict_split_choice(tmp_path):
    spec = saved_dataset_dict(tmp_path).split("#")[0]
    with pytest.raises(DataError, match=r"holds the splits train, validation; "
                                        r"pick one with .*saved#SPLIT"):
        load_corpus(spec, "en", "de")
    with pytest.raises(DataError, match=r"has no split 'test'; its splits are train, validation"):
        load_corpus(spec + "#test", "en", "de")
    single = datasets.DatasetDict({"only": datasets.Dataset.from_dict(nested(PAIRS))})
    single.save_to_disk(str(tmp_path / "one"))
    assert as_pairs(load_corpus(str(tmp_path / "one"), "en", "de")) == PAIRS
    with pytest.raises(DataError, match=r"single saved dataset with no splits; drop #train"):
        load_corpus(saved_dataset(tmp_path) + "#train", "en", "de")


def test_hub_errors(tmp_path):
    spec = hub_local_folder(tmp_path)
    with pytest.raises(DataError, match=r"^cannot load hub:.*#validation: Unknown split \"validation\""):
        load_corpus(spec.replace("#test", "#validation"), "en", "de")
    with pytest.raises(DataError, match=r"^cannot load hub:no-such-user/no-such-dataset#train: "):
        load_corpus("hub:no-such-user/no-such-dataset#train", "en", "de")
    with pytest.raises(DataError, match=r"a hub corpus is written hub:NAME\[@CONFIG\]#SPLIT"):
        load_corpus("hub:wmt/wmt14@de-en", "en", "de")


# ---------------------------------------------------------------------------
# Resolving specs for a run's config


def test_resolve_relative_prefix_from_another_directory(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "elsewhere").mkdir()
    plain(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    expected = str(tmp_path.resolve() / "data" / "corpus")
    assert resolve_corpus_spec("data/corpus") == expected
    assert resolve_corpus_spec("./elsewhere/../data/./corpus") == expected
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert resolve_corpus_spec("../data/corpus") == expected
    assert as_pairs(load_corpus(expected, "en", "de")) == PAIRS


def test_resolve_follows_symlinked_folders_but_not_the_last_name(tmp_path, monkeypatch):
    (tmp_path / "real").mkdir()
    plain(tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    # A folder of the prefix's own name, reached through a symlink: resolving
    # the prefix itself would leave `corpus.en` behind.
    (tmp_path / "other").mkdir()
    (tmp_path / "real" / "corpus").symlink_to(tmp_path / "other", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    resolved = resolve_corpus_spec("link/corpus")
    assert resolved == str(tmp_path.resolve() / "real" / "corpus")
    assert as_pairs(load_corpus(resolved, "en", "de")) == PAIRS


def test_resolve_keeps_the_split(tmp_path, monkeypatch):
    saved_dataset_dict(tmp_path)
    monkeypatch.chdir(tmp_path)
    resolved = resolve_corpus_spec("saved#validation")
    assert resolved == str(tmp_path.resolve() / "saved") + "#validation"
    assert resolve_corpus_spec("./saved/#validation") == str(tmp_path.resolve() / "saved") + "/#validation"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert as_pairs(load_corpus(resolved, "en", "de")) == PAIRS
    assert as_pairs(load_corpus(resolve_corpus_spec(str(tmp_path / "saved/#validation")), "en", "de")) == PAIRS


@pytest.mark.parametrize("spec", ["", "hub:wmt/wmt14@de-en#train", "hub:./my_data#test", "hub:x"])
def test_resolve_leaves_hub_and_empty_specs_alone(spec):
    assert resolve_corpus_spec(spec) == spec


def test_resolve_dot_folders(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_corpus_spec(".") == str(tmp_path.resolve())
    assert resolve_corpus_spec("sub/..") == str(tmp_path.resolve())
    monkeypatch.chdir(tmp_path / "sub")
    assert resolve_corpus_spec("..") == str(tmp_path.resolve())


@pytest.mark.parametrize("write", [plain, gzipped, tsv, tsv_gz, jsonl_nested, jsonl_top_level_gz,
                                   json_array, parquet_nested, parquet_top_level, saved_dataset,
                                   saved_dataset_dict, hub_local_folder])
def test_resolved_spec_loads_the_same_corpus_from_anywhere(tmp_path, monkeypatch, write):
    spec = write(tmp_path)
    monkeypatch.chdir(tmp_path)
    if not spec.startswith("hub:"):
        spec = os.path.relpath(spec, tmp_path)
    original = as_pairs(load_corpus(spec, "en", "de"))
    resolved = resolve_corpus_spec(spec)
    assert resolve_corpus_spec(resolved) == resolved
    assert os.path.isabs(resolved.removeprefix("hub:")) or resolved == spec
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert as_pairs(load_corpus(resolved, "en", "de")) == original == PAIRS


# ---------------------------------------------------------------------------
# Tokenizing and filtering


@pytest.fixture(scope="module")
def tokenizers(multi30k, tmp_path_factory):
    corpus = load_corpus(str(multi30k / "val"), "en", "de", cache_dir=str(tmp_path_factory.mktemp("hf")))
    return train_tokenizer(corpus, tmp_path_factory.mktemp("tok"), vocab_size=200, model_type="bpe")


def test_encode_corpus_appends_eos_and_round_trips(multi30k, tokenizers):
    corpus = load_corpus(str(multi30k / "val"), "en", "de")
    encoded = encode_corpus(corpus, tokenizers)
    assert len(encoded) == len(corpus)
    assert encoded.features == datasets.Features({"src_ids": datasets.List(datasets.Value("int32")),
                                                  "tgt_ids": datasets.List(datasets.Value("int32"))})
    first = encoded[:20]
    for ids in first["src_ids"] + first["tgt_ids"]:
        assert ids[-1] == EOS_ID and EOS_ID not in ids[:-1]
    assert tokenizers.src.decode(first["src_ids"]) == corpus["src"][:20]
    assert tokenizers.tgt.decode(first["tgt_ids"]) == corpus["tgt"][:20]


def test_encode_corpus_is_cached(multi30k, tokenizers, tmp_path):
    corpus = load_corpus(str(multi30k / "val"), "en", "de")
    first = encode_corpus(corpus, tokenizers)
    again = encode_corpus(load_corpus(str(multi30k / "val"), "en", "de"), tokenizers)
    assert first._fingerprint == again._fingerprint
    assert first.cache_files == again.cache_files and first.cache_files
    modified = os.stat(first.cache_files[0]["filename"]).st_mtime_ns
    encode_corpus(corpus, tokenizers)
    assert os.stat(first.cache_files[0]["filename"]).st_mtime_ns == modified

    # An explicit cache folder, and two worker processes, give the same ids.
    elsewhere = encode_corpus(corpus, tokenizers, num_proc=2, cache_dir=str(tmp_path / "ids"))
    assert all(f["filename"].startswith(str(tmp_path / "ids")) for f in elsewhere.cache_files)
    assert elsewhere["src_ids"][:] == first["src_ids"][:]
    assert elsewhere["tgt_ids"][:] == first["tgt_ids"][:]


def test_encode_in_memory_corpus(tokenizers):
    corpus = datasets.Dataset.from_dict({"src": ["A dog.", ""], "tgt": ["Ein Hund.", "Hallo"]})
    encoded = encode_corpus(corpus, tokenizers)
    assert encoded["src_ids"][1] == [EOS_ID]
    assert tokenizers.tgt.decode(encoded["tgt_ids"][:]) == ["Ein Hund.", "Hallo"]


def ids_dataset(src_lengths, tgt_lengths):
    """An encoded corpus whose sides have the given lengths (EOS included)."""
    row = lambda n: [7] * (n - 1) + [EOS_ID]
    return datasets.Dataset.from_dict({"src_ids": [row(n) for n in src_lengths],
                                       "tgt_ids": [row(n) for n in tgt_lengths]},
                                      features=datasets.Features({
                                          "src_ids": datasets.List(datasets.Value("int32")),
                                          "tgt_ids": datasets.List(datasets.Value("int32"))}))


def test_filter_pairs_counts_and_drops():
    src = [3, 1, 5, 6, 2, 1, 9, 4]
    tgt = [4, 3, 1, 2, 6, 9, 2, 5]
    # kept, empty, empty, too long, too long, empty (wins over too long), too long, kept
    kept, report = filter_pairs(ids_dataset(src, tgt), max_len=5)
    assert report == LengthFilterReport(kept=2, too_long=3, empty=3)
    assert [(len(s), len(t)) for s, t in zip(kept["src_ids"][:], kept["tgt_ids"][:])] == [(3, 4), (4, 5)]
    assert kept.format["type"] is None  # the caller's format, not the Arrow one used to filter
    # The Arrow table itself holds only the kept rows, for readers of `.data`.
    assert kept.data.num_rows == 2
    assert [len(ids) for ids in kept.data.column("src_ids").to_pylist()] == [3, 4]


def test_filter_pairs_keeps_everything_that_fits():
    encoded = ids_dataset([2, 3], [3, 2])
    kept, report = filter_pairs(encoded, max_len=3)
    assert report == LengthFilterReport(kept=2, too_long=0, empty=0)
    assert len(kept) == 2


def test_filter_pairs_refuses_to_return_nothing():
    with pytest.raises(DataError, match=r"^no usable pairs in data/x: all 3 pairs were empty or longer "
                                        r"than max_len=4$"):
        filter_pairs(ids_dataset([1, 9, 2], [2, 2, 1]), max_len=4, name="data/x")


def test_filter_pairs_on_a_real_corpus(tmp_path, tokenizers):
    write_lines(tmp_path / "c.en", ["A dog.", "", "A cat runs " * 30, "Two men.", "   "])
    write_lines(tmp_path / "c.de", ["Ein Hund.", "Leer", "Eine Katze", "Zwei Männer.", "x"])
    encoded = encode_corpus(load_corpus(str(tmp_path / "c"), "en", "de"), tokenizers)
    kept, report = filter_pairs(encoded, max_len=40, num_proc=2)
    assert report == LengthFilterReport(kept=2, too_long=1, empty=2)
    assert tokenizers.tgt.decode(kept["tgt_ids"][:]) == ["Ein Hund.", "Zwei Männer."]


def test_token_lengths_match_the_id_lists(multi30k, tokenizers):
    encoded = encode_corpus(load_corpus(str(multi30k / "val"), "en", "de"), tokenizers)
    src, tgt = token_lengths(encoded)
    assert src.dtype.kind == "i" and src.shape == (len(encoded),)
    assert src.tolist() == [len(ids) for ids in encoded["src_ids"][:]]
    assert tgt.tolist() == [len(ids) for ids in encoded["tgt_ids"][:]]
    # Through an index mapping (shuffle/select), which `.data` would not see.
    subset = encoded.shuffle(seed=0).select(range(100))
    src, tgt = token_lengths(subset)
    assert src.tolist() == [len(ids) for ids in subset["src_ids"][:]]
    assert tgt.tolist() == [len(ids) for ids in subset["tgt_ids"][:]]
    assert src.tolist() != [len(ids) for ids in encoded["src_ids"][:100]]
