"""Offline German-English corpora, split rules, file/Hub loaders and the joint tokenizer."""

from __future__ import annotations

import collections
import csv
import hashlib
import html.parser
import json
import re
from pathlib import Path

import pytest

from hf_soft_diamond.tasks.data import translation as tr
from hf_soft_diamond.tasks.data.translation import hub

LIBREOFFICE_HELP = tr.find_libreoffice_help_root()
needs_ding = pytest.mark.skipif(
    not tr.DING_PATH.is_file(), reason=f"Ding dictionary absent ({tr.DING_PATH}): apt-get install -y trans-de-en"
)
needs_libreoffice = pytest.mark.skipif(
    LIBREOFFICE_HELP is None,
    reason="LibreOffice help absent: set $HF_SOFT_DIAMOND_LIBREOFFICE_HELP to a `dpkg -x` root of "
    "libreoffice-help-de + libreoffice-help-en-us, or run hf_soft_diamond.tasks.data.download_libreoffice_help()",
)


def _norm(text: str) -> str:
    return tr.normalize_for_dedup(text)


# ---------------------------------------------------------------------------
# Ding: hand-written lines
# ---------------------------------------------------------------------------


def test_strip_ding_annotations_hand_written():
    assert tr.strip_ding_annotations("Aalbestand {m} | Aalbestände {pl}") == "Aalbestand | Aalbestände"
    assert tr.strip_ding_annotations("das A und O [ugs.]") == "das A und O"
    assert tr.strip_ding_annotations("the nuts and bolts [coll.]  ") == "the nuts and bolts"
    assert tr.strip_ding_annotations("Abk. <Abkürzung>  {f}   [adm.] [Br.]") == "Abk."
    assert tr.strip_ding_annotations("Smiley {m} /:-)/ [comp.]") == "Smiley"
    assert tr.strip_ding_annotations("noch einmal/irgendwann einmal") == "noch einmal/irgendwann einmal"
    # parentheses belong to example sentences and stay
    assert tr.strip_ding_annotations("It may come in handy (some time).") == "It may come in handy (some time)."


def test_is_complete_sentence():
    assert tr.is_complete_sentence("Das Licht ging plötzlich an.")
    assert tr.is_complete_sentence("Wer mag es ihm gesagt haben?")
    assert tr.is_complete_sentence("„Das ist doch nicht wahr!“")
    assert not tr.is_complete_sentence("Das ist gut.")  # three words
    assert not tr.is_complete_sentence("the light came on.")  # lower-case start
    assert not tr.is_complete_sentence("The light came on")  # no final punctuation
    assert not tr.is_complete_sentence("Abbau eines Lagers von etw.")  # placeholder, no sentence end
    assert not tr.is_complete_sentence("Abart ; Variante ; Variation (von etw.)")


def test_parse_ding_line_hand_written():
    assert tr.parse_ding_line("# Version :: devel 2023-01-30") == []
    assert tr.parse_ding_line("no separator here") == []
    line = (
        "scheinbar; dem äußeren Eindruck nach {adv} | Das ist nur scheinbar paradox. "
        ":: seemingly | This is only seemingly a paradox.\n"
    )
    assert tr.parse_ding_line(line) == [("Das ist nur scheinbar paradox.", "This is only seemingly a paradox.")]
    assert tr.parse_ding_line(line, sentences_only=False) == [
        ("scheinbar", "seemingly"),
        ("dem äußeren Eindruck nach", "seemingly"),
        ("Das ist nur scheinbar paradox.", "This is only seemingly a paradox."),
    ]
    # Different alternative counts: positions are not aligned, nothing is kept.
    assert tr.parse_ding_line("a | Das ist ein Satz. :: a | b | This is a sentence.") == []
    # Separators inside notes do not split.
    assert tr.parse_ding_line("Folie {f} (als Meterware; dick) :: sheeting (thick; wide)", sentences_only=False) == [
        ("Folie (als Meterware; dick)", "sheeting (thick; wide)")
    ]
    # Synonym sentences: every German one with every English one; annotations stripped.
    line = "Mir ist kalt.; Ich friere jetzt sehr. [ugs.] :: I am very cold. [coll.]"
    # "Mir ist kalt." has only three words: dropped, the other synonym stays.
    assert tr.parse_ding_line(line) == [("Ich friere jetzt sehr.", "I am very cold.")]
    line = "Mir ist jetzt kalt.; Ich friere jetzt sehr. [ugs.] :: I am very cold now. {cold; colder} [coll.]"
    assert tr.parse_ding_line(line) == [
        ("Mir ist jetzt kalt.", "I am very cold now."),
        ("Ich friere jetzt sehr.", "I am very cold now."),
    ]


# ---------------------------------------------------------------------------
# Ding: the real file
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ding_pairs():
    if not tr.DING_PATH.is_file():
        pytest.skip(f"Ding dictionary absent ({tr.DING_PATH}): apt-get install -y trans-de-en")
    return tr.read_ding_pairs()


@needs_ding
def test_real_ding_counts_and_cleaning(ding_pairs):
    # ~19k complete example sentences (DATA.md); 20,309 pairs incl. synonyms, 19,137 distinct German.
    assert 19_000 <= len(ding_pairs) <= 22_000
    assert 18_000 <= len({de for de, _ in ding_pairs}) <= 20_500
    annotation = re.compile(r"\{[^{}]*\}|\[[^\[\]]*\]|<[^<>]*>")
    for de, en in ding_pairs:
        for side in (de, en):
            assert annotation.search(side) is None, side
            assert side == " ".join(side.split())
            assert " :: " not in side and " | " not in side
            assert side.count("(") == side.count(")"), side
            assert tr.is_complete_sentence(side)
    # Independent reference: lines whose whole German and English side is one plain sentence.
    raw = tr.DING_PATH.read_text(encoding="utf-8").splitlines()
    simple = [
        tuple(line.split(" :: "))
        for line in raw
        if not line.startswith("#") and line.count(" :: ") == 1 and not re.search(r"[|;{}\[\]<>]", line)
    ]
    simple = [(d, e) for d, e in simple if tr.is_complete_sentence(d) and tr.is_complete_sentence(e)]
    assert len(simple) > 1_000
    assert set(simple) <= set(ding_pairs)
    assert ("Wer mag es ihm gesagt haben?", "Who might have told him?") in set(ding_pairs)


@needs_ding
def test_real_ding_annotations_are_stripped_where_present(ding_pairs):
    raw_lines = [
        line for line in tr.DING_PATH.read_text(encoding="utf-8").splitlines() if "{" in line or "[" in line
    ]
    assert len(raw_lines) > 100_000  # the annotations are really there in the file
    parsed = [p for line in raw_lines[:20_000] for p in tr.parse_ding_line(line, sentences_only=False)]
    assert len(parsed) > 20_000
    for de, en in parsed:
        for side in (de, en):
            assert not re.search(r"[{}\[\]]|<[^<>]*>|(?<!\S)/[^/\s]+/(?![^\s;,|])", side), (de, en)
            assert side.count("(") == side.count(")"), (de, en)  # no split inside a note


# ---------------------------------------------------------------------------
# LibreOffice help: hand-written tree and the real pages
# ---------------------------------------------------------------------------


def _write_help_page(root: Path, language: str, relative: str, body: str) -> None:
    path = root / language / "text" / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<html><body><div id=\"DisplayArea\">{body}</div></body></html>", encoding="utf-8")


def test_html_to_text_hand_written():
    fragment = (
        'Drücken Sie <span class="switchinline"><span hidden="true" id="MACx" class="MAC">'
        '<span class="keycode">Befehl</span></span><span hidden="true" id="defaultx">'
        '<span class="keycode">Strg</span></span></span>+C &amp; fertig<br/>neu &lt;x&gt; '
        '<a href="y.html">hier</a>.'
    )
    assert tr.html_to_text(fragment) == "Drücken Sie Strg+C & fertig neu <x> hier."


def test_read_libreoffice_help_pairs_hand_written(tmp_path):
    help_dir = tmp_path / "usr" / "share" / "libreoffice" / "help"
    _write_help_page(
        help_dir,
        "de",
        "shared/a.html",
        '<h1 id="hd_id1" dir="auto">Abfrage <span class="emph">Entwurf</span></h1>'
        '<p id="par_id2" class="paragraph">Erster Absatz.</p>'
        '<p id="par_id3">Zweimal A</p><p id="par_id3">Zweimal B</p>'
        '<p id="par_id4">Nur deutsch</p>'
        '<p id="par_id5">SUM()</p>'
        '<p id="par_id6">Dreimal</p><p id="par_id6">x</p>'
        '<p class="nope">ohne id</p>',
    )
    _write_help_page(
        help_dir,
        "en-US",
        "shared/a.html",
        '<h1 id="hd_id1" dir="auto">Query <span class="emph">Design</span></h1>'
        '<p id="par_id2" class="paragraph">First paragraph.</p>'
        '<p id="par_id3">Twice A</p><p id="par_id3">Twice B</p>'
        '<p id="par_id5">SUM()</p>'
        '<p id="par_id6">Thrice</p>'
        '<p class="nope">no id</p>',
    )
    _write_help_page(help_dir, "de", "shared/only_de.html", '<p id="par_id9">Fehlt im Englischen</p>')
    expected = [
        ("Abfrage Entwurf", "Query Design"),
        ("Erster Absatz.", "First paragraph."),
        ("Zweimal A", "Twice A"),
        ("Zweimal B", "Twice B"),
    ]
    assert tr.read_libreoffice_help_pairs(tmp_path) == expected  # the dpkg -x root
    assert tr.read_libreoffice_help_pairs(help_dir) == expected  # or the help dir itself
    with pytest.raises(FileNotFoundError):
        tr.read_libreoffice_help_pairs(tmp_path / "missing")


class _ParagraphCollector(html.parser.HTMLParser):
    """Independent reference: the stdlib HTML parser, first text per paragraph id."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.texts: dict[str, str] = {}
        self.occurrences: collections.Counter[str] = collections.Counter()
        self._current: str | None = None
        self._tag: str | None = None
        self._hidden_depth = 0
        self._parts: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if self._current is None and tag in {"p", "h1", "h2", "h3", "h4", "h5", "h6"}:
            ident = attrs.get("id") or ""
            if ident.startswith(("par_id", "hd_id")):
                self._current, self._tag, self._parts = ident, tag, []
                self.occurrences[ident] += 1
        elif self._current is not None and tag == "br":
            self._parts.append(" ")
        elif self._current is not None and tag == "span":
            if self._hidden_depth or ("hidden" in attrs and (attrs.get("class") or "").isupper()):
                self._hidden_depth += 1

    def handle_endtag(self, tag):
        if self._current is not None and tag == "span" and self._hidden_depth:
            self._hidden_depth -= 1
        elif self._current is not None and tag == self._tag:
            self.texts.setdefault(self._current, " ".join("".join(self._parts).split()))
            self._current = None

    def handle_data(self, data):
        if self._current is not None and not self._hidden_depth:
            self._parts.append(data)


@pytest.fixture(scope="module")
def libreoffice_pairs():
    if LIBREOFFICE_HELP is None:
        pytest.skip("LibreOffice help absent (see needs_libreoffice)")
    return tr.read_libreoffice_help_pairs(LIBREOFFICE_HELP)


@needs_libreoffice
def test_real_libreoffice_counts_and_cleaning(libreoffice_pairs):
    distinct = set(libreoffice_pairs)
    assert 32_000 <= len(distinct) <= 38_000  # DATA.md: about 35k distinct pairs
    assert 21_000 <= sum(len(en.split()) >= 5 for _, en in distinct) <= 27_000  # about 25k
    for de, en in distinct:
        for side in (de, en):
            # markup of the pages (texts that *talk about* tags, like "<h1>", are real content)
            assert not re.search(r"<span\b|</span>|</p>|\bclass=\"|\bhref=\"|\bdir=\"auto\"", side), side
            assert not re.search(r"&(amp|lt|gt|quot|nbsp|#\d+);", side), side
        assert de != en


@needs_libreoffice
def test_real_libreoffice_alignment_matches_stdlib_parser(libreoffice_pairs):
    pairs = set(libreoffice_pairs)
    checked = 0
    for relative in ("text/shared/main0214.html", "text/scalc/01/04060106.html", "text/swriter/guide/text_frame.html"):
        de_file, en_file = LIBREOFFICE_HELP / "de" / relative, LIBREOFFICE_HELP / "en-US" / relative
        if not (de_file.is_file() and en_file.is_file()):
            continue
        de_parser, en_parser = _ParagraphCollector(), _ParagraphCollector()
        de_parser.feed(de_file.read_text(encoding="utf-8"))
        en_parser.feed(en_file.read_text(encoding="utf-8"))
        for ident, de in de_parser.texts.items():
            if de_parser.occurrences[ident] != 1 or en_parser.occurrences[ident] != 1:
                continue
            en = en_parser.texts.get(ident)
            if en and de and en != de and re.search(r"[A-Za-z]", en) and re.search(r"[A-Za-zÄÖÜäöü]", de):
                assert (de, en) in pairs, (relative, ident, de, en)
                checked += 1
    assert checked >= 20


# ---------------------------------------------------------------------------
# Dedup and splits
# ---------------------------------------------------------------------------


def test_split_of_key_matches_an_independent_sha256():
    for key in ["das licht ging plötzlich an.", "wer mag es ihm gesagt haben?", "x"]:
        digest = hashlib.sha256(("hf_soft_diamond/split/v1:" + key).encode("utf-8")).hexdigest()
        u = int(digest[:16], 16) / 2**64
        expected = "test" if u < 0.05 else "validation" if u < 0.10 else "train"
        assert tr.split_of_key(key) == expected
    counts = collections.Counter(tr.split_of_key(f"satz {i}") for i in range(20_000))
    assert abs(counts["test"] / 20_000 - 0.05) < 0.006
    assert abs(counts["validation"] / 20_000 - 0.05) < 0.006


def test_assign_splits_dedupes_and_never_leaks():
    pairs = [(f"Satz Nummer {i}.", f"Sentence number {i}.") for i in range(3000)]
    pairs += [("SATZ  nummer 7.", "sentence number 7."), ("Satz Nummer 7.", "Sentence number 7.")]  # duplicates
    # Chains through shared targets / sources must stay together.
    pairs += [(f"Kette {i} a.", f"Chain {i}.") for i in range(300)]
    pairs += [(f"Kette {i} b.", f"Chain {i}.") for i in range(300)]
    pairs += [(f"Kette {i} b.", f"Chain {i} again.") for i in range(300)]
    splits = tr.assign_splits(pairs, validation_fraction=0.1, test_fraction=0.1)
    assert sum(len(v) for v in splits.values()) == 3000 + 900
    seen_de, seen_en = {}, {}
    for name, rows in splits.items():
        for de, en in rows:
            assert seen_de.setdefault(_norm(de), name) == name
            assert seen_en.setdefault(_norm(en), name) == name
    assert all(len(splits[name]) > 200 for name in ("validation", "test"))
    assert splits == tr.assign_splits(pairs, validation_fraction=0.1, test_fraction=0.1)  # deterministic
    with pytest.raises(ValueError):
        tr.assign_splits(pairs, validation_fraction=0.6, test_fraction=0.5)


# ---------------------------------------------------------------------------
# The offline corpus loader (built once per module, cached in a tmp dir)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("corpus_cache")


@pytest.fixture(scope="module")
def ding_corpus(corpus_cache):
    if not tr.DING_PATH.is_file():
        pytest.skip("Ding dictionary absent")
    return tr.load_offline_translation_corpus("ding", cache_dir=corpus_cache)


@pytest.fixture(scope="module")
def combined_corpus(corpus_cache):
    if not tr.DING_PATH.is_file() or LIBREOFFICE_HELP is None:
        pytest.skip("Ding or LibreOffice help absent")
    return tr.load_offline_translation_corpus("ding+libreoffice", libreoffice_root=LIBREOFFICE_HELP,
                                              cache_dir=corpus_cache)


def _assert_no_leakage(corpus):
    owner_de, owner_en, seen_pairs = {}, {}, set()
    for split, dataset in corpus.items():
        for row in dataset["translation"]:
            de, en = _norm(row["de"]), _norm(row["en"])
            assert owner_de.setdefault(de, split) == split, row
            assert owner_en.setdefault(en, split) == split, row
            assert (de, en) not in seen_pairs, row
            seen_pairs.add((de, en))


@needs_ding
def test_ding_corpus_splits(ding_corpus, ding_pairs, corpus_cache):
    assert set(ding_corpus) == {"train", "validation", "test"}
    sizes = {k: len(v) for k, v in ding_corpus.items()}
    assert 900 <= sizes["validation"] <= 1150 and 900 <= sizes["test"] <= 1150, sizes
    assert sum(sizes.values()) == len({(_norm(d), _norm(e)) for d, e in ding_pairs})
    assert ding_corpus["train"].column_names == ["translation"]
    assert set(ding_corpus["train"][0]["translation"]) == {"de", "en"}
    _assert_no_leakage(ding_corpus)
    # The rows are assign_splits of the parsed pairs, and the cache returns them again.
    expected = tr.assign_splits(ding_pairs)
    again = tr.load_offline_translation_corpus("ding", cache_dir=corpus_cache, source_lang="en", target_lang="de")
    for split in ding_corpus:
        rows = [{"de": de, "en": en} for de, en in expected[split]]
        assert again[split]["translation"] == ding_corpus[split]["translation"] == rows
    assert list((corpus_cache / "prepared").iterdir())


@needs_ding
@needs_libreoffice
def test_combined_corpus_contains_each_part_split_by_split(combined_corpus, ding_corpus):
    sizes = {k: len(v) for k, v in combined_corpus.items()}
    assert 45_000 <= sizes["train"] <= 55_000 and 2_300 <= sizes["test"] <= 3_100, sizes
    _assert_no_leakage(combined_corpus)
    for split in ("train", "validation", "test"):
        combined_rows = {(r["de"], r["en"]) for r in combined_corpus[split]["translation"]}
        ding_rows = {(r["de"], r["en"]) for r in ding_corpus[split]["translation"]}
        assert ding_rows <= combined_rows


@needs_ding
def test_min_words_filters_after_the_split(ding_corpus, corpus_cache):
    filtered = tr.load_offline_translation_corpus("ding", cache_dir=corpus_cache, min_words=6)
    for split in ding_corpus:
        rows = filtered[split]["translation"]
        assert 0 < len(rows) < len(ding_corpus[split])
        assert all(len(r["de"].split()) >= 6 and len(r["en"].split()) >= 6 for r in rows)
        assert {(r["de"], r["en"]) for r in rows} <= {(r["de"], r["en"]) for r in ding_corpus[split]["translation"]}


def test_offline_loader_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown offline corpus"):
        tr.load_offline_translation_corpus("europarl", cache_dir=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="German-English"):
        tr.load_offline_translation_corpus("ding", source_lang="fr", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="trans-de-en"):
        tr.load_offline_translation_corpus("ding", ding_path=tmp_path / "nope", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError):
        tr.load_offline_translation_corpus("libreoffice", libreoffice_root=tmp_path, cache_dir=tmp_path)


# ---------------------------------------------------------------------------
# Hub and local files
# ---------------------------------------------------------------------------


def test_load_hub_translation_dataset_passes_names(monkeypatch):
    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return "sentinel"

    monkeypatch.setattr(hub.datasets, "load_dataset", fake_load_dataset)
    assert tr.load_hub_translation_dataset("iwslt2017", "iwslt2017-de-en", cache_dir="/c") == "sentinel"
    assert calls[-1][0] == ("iwslt2017", "iwslt2017-de-en")
    assert calls[-1][1]["cache_dir"] == "/c" and "trust_remote_code" not in calls[-1][1]
    tr.load_hub_translation_dataset("wmt14", trust_remote_code=True, revision="main")
    assert calls[-1][0] == ("wmt14", "de-en")
    assert calls[-1][1]["trust_remote_code"] is True and calls[-1][1]["revision"] == "main"


def test_load_translation_files_all_formats(tmp_path):
    rows = [("Guten Morgen.", "Good morning."), ("Wie geht's, \"Anna\"?", 'How are you, "Anna"?')]
    nested = tmp_path / "train.jsonl"
    nested.write_text("".join(json.dumps({"translation": {"de": d, "en": e}, "id": i}) + "\n"
                              for i, (d, e) in enumerate(rows)))
    flat = tmp_path / "valid.json"
    flat.write_text(json.dumps([{"de": d, "en": e, "extra": 1} for d, e in rows]))
    table = tmp_path / "test.csv"
    with table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["en", "de"])
        writer.writerows((e, d) for d, e in rows)
    corpus = tr.load_translation_files(nested, flat, table)
    expected = [{"de": d, "en": e} for d, e in rows]
    for split in ("train", "validation", "test"):
        assert corpus[split].column_names == ["translation"]
        assert corpus[split]["translation"] == expected
    tsv = tmp_path / "t.tsv"
    tsv.write_text("de\ten\n" + "".join(f"{d}\t{e}\n" for d, e in rows), encoding="utf-8")
    reverse = tr.load_translation_files(test_file=tsv, source_lang="en", target_lang="de")
    assert list(reverse) == ["test"] and reverse["test"]["translation"] == [{"en": e, "de": d} for d, e in rows]
    with pytest.raises(ValueError, match="columns"):
        tr.load_translation_files(train_file=table, source_lang="de", target_lang="fr")
    with pytest.raises(ValueError):
        tr.load_translation_files()


# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------


@needs_ding
def test_bpe_tokenizer_round_trips_real_sentences(ding_corpus, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = tr.train_translation_tokenizer(ding_corpus["train"], vocab_size=4000, output_dir=tmp_path / "tok")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert len(reloaded) == 4000
    assert (reloaded.pad_token, reloaded.eos_token, reloaded.unk_token) == ("<pad>", "</s>", "<unk>")
    assert (reloaded.pad_token_id, reloaded.eos_token_id, reloaded.unk_token_id) == (0, 1, 2)
    sentences = [s for row in ding_corpus["test"]["translation"] for s in (row["de"], row["en"])]
    sentences += ["Größe: 12 × 3 mm – „Zitat“ — 😀 Ωmega", "Line with  two spaces"]
    for text in sentences:
        ids = reloaded(text)["input_ids"]
        assert ids[-1] == reloaded.eos_token_id and reloaded.unk_token_id not in ids
        assert reloaded.decode(ids, skip_special_tokens=True) == text
    assert tokenizer("Das Licht ging an.")["input_ids"] == reloaded("Das Licht ging an.")["input_ids"]
    batch = reloaded(["Kurz.", "Ein etwas längerer Satz."], text_target=["Short.", "A longer sentence."], padding=True)
    assert batch["input_ids"][0][-1] == reloaded.pad_token_id and batch["labels"][1][-1] == reloaded.eos_token_id


@needs_ding
def test_unigram_tokenizer_round_trips_training_sentences(ding_corpus):
    rows = ding_corpus["train"]["translation"][:1500]
    tokenizer = tr.train_translation_tokenizer(rows, vocab_size=1200, algorithm="unigram")
    for row in rows[:300]:
        for text in (row["de"], row["en"]):
            ids = tokenizer(text)["input_ids"]
            assert tokenizer.decode(ids, skip_special_tokens=True) == text
