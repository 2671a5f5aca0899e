"""Issue 18, text: known texts in each encoding, short (one sentence) and long (the
sentence eight times), must come out as the same characters, not merely be accepted;
what cannot be decoded faithfully is bad_encoding, never mojibake."""

from __future__ import annotations

import codecs

import loom.transforms.language as language
import loom.transforms.text as text_mod
import pytest
from loom.schemas.records import Reason
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.sniff import DecodeError
from loom.transforms.text import decode_text

SPEC = PreprocessingSpec()

# language: (a pangram or plain sentence, the encodings it is written in)
TEXTS = {
    "ru": ("Съешь же ещё этих мягких французских булок, да выпей чаю.",
           ["koi8_r", "cp1251", "iso8859_5", "cp866", "mac_cyrillic"]),
    "uk": ("Чуєш їх, доцю, га? Кумедна ж ти, прощайся без ґольфів!", ["koi8_u", "cp1251"]),
    "el": ("Θέλει αρετή και τόλμη η ελευθερία. Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.",
           ["cp1253", "iso8859_7"]),
    "he": ("דג סקרן שט בים מאוכזב ולפתע מצא חברה. " * 2, ["cp1255", "iso8859_8"]),
    "ar": ("نص حكيم له سر قاطع وذو شأن عظيم مكتوب على ثوب أخضر ومغلف بجلد أزرق.",
           ["cp1256", "iso8859_6"]),
    "th": ("เป็นมนุษย์สุดประเสริฐเลิศคุณค่า กว่าบรรดาฝูงสัตว์เดรัจฉาน", ["cp874", "tis_620"]),
    "ko": ("다람쥐 헌 쳇바퀴에 타고파. 키스의 고유조건은 입술끼리 만나야 하고 특별한 기술은 필요치 않다.",
           ["cp949", "euc_kr", "iso2022_kr", "johab"]),
    "ja": ("いろはにほへと ちりぬるを わかよたれそ つねならむ。日本語の文章を正しく読めるかどうか確かめる。",
           ["shift_jis", "euc_jp", "iso2022_jp", "cp932"]),
    "zh": ("我能吞下玻璃而不伤身体。今天的天气很好，我们一起去公园散步吧。", ["gb18030", "gbk", "gb2312"]),
    "zh-hant": ("我能吞下玻璃而不傷身體。台灣的天氣很好，我們明天去臺北看朋友。", ["big5", "cp950"]),
    "fr": ("Portez ce vieux whisky au juge blond qui fume. Où est passé l'été, déjà ?",
           ["cp1252", "latin_1"]),
    "de": ("Falsches Üben von Xylophonmusik quält jeden größeren Zwerg.", ["cp1252", "latin_1"]),
    "pl": ("Zażółć gęślą jaźń. Pchnąć w tę łódź jeża lub ośm skrzyń fig.", ["cp1250", "iso8859_2"]),
    "cs": ("Příliš žluťoučký kůň úpěl ďábelské ódy.", ["cp1250", "iso8859_2"]),
    "tr": ("Pijamalı hasta yağız şoföre çabucak güvendi.", ["cp1254", "iso8859_9"]),
}
WIDE = ["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"]  # no BOM
CASES = [(lang, enc, n) for lang, (_, encs) in TEXTS.items() for enc in encs for n in (1, 8)]
CASES += [(lang, enc, 1) for lang in ("ru", "ja", "fr", "ar") for enc in WIDE]


@pytest.mark.parametrize("lang,encoding,copies", CASES)
def test_known_text_comes_out_as_its_characters(lang, encoding, copies):
    sentence = TEXTS[lang][0]
    text = " ".join([sentence.strip()] * copies)
    assert decode_text(text.encode(encoding), SPEC) == text


def test_iso2022_escapes_are_not_read_as_ascii():
    """ISO-2022-JP is 7-bit, so it is valid UTF-8: the escapes must send it elsewhere."""
    data = TEXTS["ja"][0].encode("iso2022_jp")
    assert data.isascii() and b"\x1b$B" in data
    assert decode_text(data, SPEC) == TEXTS["ja"][0]


def test_ansi_colour_escapes_stay_utf8():
    assert decode_text("\x1b[31mred\x1b[0m alert: café".encode(), SPEC) == "[31mred[0m alert: café"


def test_euc_tw_has_no_faithful_codec():
    """EUC-TW (CNS 11643, made with glibc iconv): Python has no codec for it; GBK and
    Big5 read its bytes as unrelated ideographs. Rejected, not accepted as mojibake."""
    data = bytes.fromhex("cabcd7e4c9bfc4b6d2c4ede8c8d4c4e2e3b2cbcefcd5a1a4c6bafda4cefbc5b2"
                         "d6b4d0fec7efa1a2cabcd4afcdfcc5b2c6aaead7c6a1d2e0cea5c5aea1a4")
    with pytest.raises(DecodeError) as e:
        decode_text(data, SPEC)
    assert e.value.reason == Reason.BAD_ENCODING


@pytest.mark.parametrize("sentence,encoding", [("Съешь же ещё", "koi8_r"),
                                               ("Привет, мир!", "cp1251"),
                                               ("Θέλει αρετή και", "cp1253")])
def test_too_short_to_tell_is_rejected_not_guessed(sentence, encoding):
    """Two or three words read about as well in another code page: never mojibake."""
    try:
        out = decode_text(sentence.encode(encoding), SPEC)
    except DecodeError as e:
        assert e.reason == Reason.BAD_ENCODING
    else:
        assert out == sentence


def test_mojibake_is_not_placed_in_a_language():
    """The readings the old cp1252 fallback produced score below the right ones."""
    for lang in ("ru", "el", "he", "th", "ko"):
        sentence, (encoding, *_) = TEXTS[lang]
        wrong = sentence.encode(encoding).decode("cp1252", errors="replace")
        assert language.placement(wrong)[1] < language.placement(sentence)[1], lang


def test_no_single_byte_rule_left():
    assert not hasattr(text_mod, "_SINGLE_BYTE")


def test_cost_follows_the_cap_not_the_file(monkeypatch):
    """A 32 MB one-line text: only a window a little over the cap is decoded and cleaned."""
    seen, decoded = [], []
    clean, decode = text_mod._clean, text_mod._decode
    monkeypatch.setattr(text_mod, "_clean", lambda t: seen.append(len(t)) or clean(t))
    monkeypatch.setattr(text_mod, "_decode",
                        lambda d, n: (out := decode(d, n), decoded.append(len(out)))[0])
    line = ("word " * ((32 << 20) // 5)).encode()
    assert len(line) > 30_000_000
    spec = PreprocessingSpec(max_text_chars=1000)
    out = decode_text(line, spec)
    assert len(out) == 999 and out.startswith("word word")  # rstrip of a cut "word "
    assert seen and max(seen) <= 4 * 1000 + 256
    assert decoded and max(decoded) <= 200_000  # characters decoded, of 33 million


def test_whitespace_runs_widen_the_window_up_to_a_bound(monkeypatch):
    seen = []
    clean = text_mod._clean
    monkeypatch.setattr(text_mod, "_clean", lambda t: seen.append(len(t)) or clean(t))
    data = (" " * 100_000 + "tail words here").encode()
    spec = PreprocessingSpec(max_text_chars=100)
    with pytest.raises(DecodeError) as e:  # the words lie past 32x the cap: not looked for
        decode_text(data, spec)
    assert e.value.reason == Reason.EMPTY and max(seen) <= 32 * 100 * 4


@pytest.mark.parametrize("codec", ["koi8_r", "cp1251", "cp1255", "cp1256", "cp874", "cp949"])
def test_detected_codecs_are_kept(codec):
    """The old rule sent these (correctly detected) to cp1252."""
    lang = {"koi8_r": "ru", "cp1251": "ru", "cp1255": "he", "cp1256": "ar", "cp874": "th",
            "cp949": "ko"}[codec]
    sentence = TEXTS[lang][0].strip()
    assert decode_text(sentence.encode(codec), SPEC) == sentence
    assert codecs.lookup(text_mod.detect_codec(sentence.encode(codec))).name != "cp1252"
