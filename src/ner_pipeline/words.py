"""Raw text → words and sentences, split the way CoNLL-2003 (Penn Treebank conventions) split its text.

A model only knows the words it was trained on, so raw text is cut the way the training corpus was: on CoNLL-2003
these rules give back the corpus's own tokens for 99.9 % of the words of its sentences joined by spaces, and
98.7 % of its test sentences word for word (`tests/test_raw_text.py` checks it; the letters-and-digits pattern used
before gave 73 %). Every word and sentence carries exact character offsets: `text[start:end]` is
always the word.

Words (one regex, `WORD_RULES`, tried left to right at each position; the first rule that matches wins):

1. URLs and e-mail addresses are one word, without the punctuation that ends them (`http://x.org/a`).
2. A list number opening a line is one word with its period (`1. Michael Schumacher`), as in CoNLL's results.
3. Currency prefixes are one word (`US$`, `C$`, `HK$`); a bare `$` stands alone (`$`, `5`).
4. A clitic written apart stays one word (`Israel 's`, `do n't`).
5. A word is a run of letters, marks, digits and invisible joiners, and pieces joined inside it stay one word:
   hyphens (`AL-AIN`, `10-year`, `1996-12-06`), slashes (`9/11`), `&` (`S&P`, `AT&T`), apostrophes
   (`O'Brien`), periods between letters or digits (`3.5`, `reuters.com`), commas and colons between digits
   (`1,000`, `3:30`). A leading `+` or `.` before a digit belongs to the number (`+44`, `.500`); a minus sign
   does not (CoNLL writes `-` apart). Initialisms keep their periods (`U.S.`, `a.m.`, `Ph.D.`), and so do a
   capital initial (`J.`) and the abbreviations in `ABBREVIATIONS` (`Mr.`, `Inc.`, `Calif.`; `No.` only
   before a number). Any other period ends the word (`said.` → `said`, `.`).
6. A run of one repeated period, dash, asterisk, equals sign, underscore, tilde or quote is one word (`...`,
   `--`, `**`, `''`); other punctuation stands one mark per word (`!`, `!`).
7. Anything else is one word per grapheme: `(`, `,`, `"`, an emoji with its modifiers or joiners, a flag.

Then, as in the Penn Treebank, clitics are split from the word they end (`Germany's` → `Germany`, `'s`;
`don't` → `do`, `n't`), and invisible characters (`INVISIBLE`: zero-width joiners, soft hyphen, BOM, direction
marks) are trimmed from the ends of every word: they never start or end a word, and never make one on their own.
The zero-width space separates words, as a space does.

Sentences (`split_sentences`): a line break always ends one (headlines, bylines and datelines carry no final
punctuation, and CoNLL-2003 keeps them as sentences of their own; a training unit never holds a line break). With
`terminators`, a sentence also ends after a word made only of `.`, `!`, `?` or `…` (with closing quotes or
brackets written right after it) when the next word, past any opening quotes or brackets, starts with a capital or
a digit. Abbreviations and initialisms are words of their own, so `U.S. Treasury` never ends a sentence.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import regex

Word = tuple[str, int, int]  # surface text, start, end: text[start:end] == surface

# Abbreviations that keep their period (Penn Treebank / Moses non-breaking prefixes that occur in news text, and
# the ones CoNLL-2003 writes with a period). Case-sensitive ("Mass." is the state, "mass." a word), plus
# the capitalised forms headlines use.
ABBREVIATION_GROUPS = {
    "titles and ranks": "Mr Mrs Ms Messrs Mme Mlle Dr Drs Prof Rev Hon Fr Msgr Sr Jr St Gen Col Lt Capt Cmdr Cdr Sgt "
    "Maj Adm Brig Cpl Pvt Gov Sen Rep Reps Pres Supt Insp Amb",
    "companies and organisations": "Inc Corp Co Cos Ltd Bros Assn Dept Univ Mfg Intl Govt",
    "places and addresses": "Mt Ft Ave Blvd Rd Hwy Ala Ariz Ark Calif Colo Conn Del Fla Ga Ill Ind Kan Kans Ky La Md "
    "Mass Mich Minn Miss Mo Mont Neb Nev Okla Ore Pa Penn Tenn Tex Va Vt Wash Wis Wyo",
    "months and days": "Jan Feb Mar Apr Jun Jul Aug Sep Sept Oct Nov Dec Mon Tue Tues Wed Thu Thur Thurs Fri Sat Sun",
    "other": "vs etc approx est al cf ca fig Fig vol Vol",
}
_LISTED = [word for group in ABBREVIATION_GROUPS.values() for word in group.split()]
# Headlines write them in capitals ("ST. LOUIS", "ACME CORP."): those forms count too.
ABBREVIATIONS = tuple(dict.fromkeys(_LISTED + [word.upper() for word in _LISTED if word[0].isupper()]))
# Abbreviations that keep their period only before a number ("No. 1", "pp. 12"): elsewhere they are words.
NUMBER_ABBREVIATIONS = ("No", "Nos", "Nr", "pp", "Art")

# Zero-width and other invisible format characters (Unicode category Cf) other than the zero-width space: soft
# hyphen, Mongolian vowel separator, zero-width (non-)joiner, direction marks and embeddings, word joiner and
# invisible operators, BOM. (Emoji tag characters are left alone: they end flag sequences such as England's.)
INVISIBLE_RANGES = (
    (0x00AD, 0x00AD),
    (0x180E, 0x180E),
    (0x200C, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xFEFF, 0xFEFF),
)
INVISIBLE_CHARS = "".join(chr(c) for lo, hi in INVISIBLE_RANGES for c in range(lo, hi + 1))
INVISIBLE = "".join(rf"\u{lo:04x}" + (rf"-\u{hi:04x}" if hi > lo else "") for lo, hi in INVISIBLE_RANGES)
ZERO_WIDTH_SPACE = "\u200b"
# Whitespace, the information separators \x1c-\x1f (which str.split treats as whitespace) and the zero-width
# space, which marks a word boundary without a gap.
SEPARATOR = r"\s\x1c-\x1f\u200b"
LINE_BREAK = regex.compile(r"[\n\r\v\f\x85\u2028\u2029]")
_W = rf"[\p{{L}}\p{{M}}\p{{N}}_{INVISIBLE}]"  # a word character
_NOT_W = r"(?![\p{L}\p{N}])"
_ABBREVIATION = "|".join(sorted(ABBREVIATIONS, key=len, reverse=True))
_NUMBER_ABBREVIATION = "|".join(NUMBER_ABBREVIATIONS)
# One piece of a word: an initialism with its periods, an abbreviation with its period, or a plain run.
_PIECE = (
    rf"(?:\p{{L}}\.){{2,}}"
    rf"|(?:{_ABBREVIATION})\.{_NOT_W}"
    rf"|(?:{_NUMBER_ABBREVIATION})\.(?=[{SEPARATOR}]*\d)"
    rf"|\p{{Lu}}\.{_NOT_W}"
    rf"|{_W}+"
)
_JOINER = r"(?:[-‐/&'’.]|(?<=\d)[,:](?=\d))"
WORD_RULES = regex.compile(
    rf"""
    (?:https?://|www\.)[^{SEPARATOR}]+?(?=[.,;:!?'")\]}}»”’]*(?:[{SEPARATOR}]|$))  # URL
    | [\w.+-]+@[\w-]+(?:\.[\w-]+)+                                                # e-mail
    | (?<=(?:^|[\n\r\v\f\x85\u2028\u2029])[^\S\n\r]*)\d{{1,3}}\.(?=[{SEPARATOR}]|$)     # list number at a line start
    | \p{{Lu}}{{1,3}}\$                                                           # currency prefix
    | (?<![\p{{L}}\p{{N}}])(?:n['’]t|['’](?i:s|m|d|re|ve|ll)){_NOT_W}             # clitic written apart
    | (?:[+.](?=\d))?(?:{_PIECE})(?:{_JOINER}(?:{_PIECE}))*                       # word
    | ([-.*=_~'`])\1+                                                            # a run: ..., --, **, ''
    | (?![{SEPARATOR}])\X                                                         # one grapheme
    """,
    regex.VERBOSE,
)
CLITIC = regex.compile(r"(?:n['’]t|['’](?i:s|m|d|re|ve|ll))$", regex.IGNORECASE)
TERMINATOR = regex.compile(r"[.!?…]+")
CLOSING = regex.compile(r"[\"'”’»)\]}]+")
ENDINGS = frozenset(".!?…\"'”’»)]}")
OPENING = regex.compile(r"[\"'“‘«(\[{¿¡`]+")


@dataclass(frozen=True)
class Sentence:
    """Words [start, end) of a text's word list, and the characters they cover."""

    start: int
    end: int
    char_start: int
    char_end: int


def split_words(text: str) -> list[Word]:
    """Words of raw text with their character offsets: `text[start:end] == word` always holds.

    Example:
        `split_words("U.S. stocks rose 1,000 points at S&P's close.")` gives `U.S.`, `stocks`, `rose`, `1,000`,
        `points`, `at`, `S&P`, `'s`, `close`, `.`.
    """
    words: list[Word] = []
    # str.split cuts at exactly the separators of the rules (whitespace and \x1c-\x1f); a zero-width space
    # becomes a space of the same length, so positions are unchanged.
    spaced = text.replace(ZERO_WIDTH_SPACE, " ") if ZERO_WIDTH_SPACE in text else text
    end = 0
    for chunk in spaced.split():
        start = spaced.find(chunk, end)
        end = start + len(chunk)
        if chunk.isalnum() or (len(chunk) == 1 and chunk not in INVISIBLE_CHARS):
            words.append((chunk, start, end))  # most words: no rule to apply
        else:
            words += _rule_words(text, start, end)
    return words


def _rule_words(text: str, start: int, end: int) -> list[Word]:
    """The words `WORD_RULES` finds in text[start:end], a run without separators (its rules look around it)."""
    words: list[Word] = []
    for match in WORD_RULES.finditer(text, start):
        if match.start() >= end:
            break
        word, first, last = _trim_invisible(match.group(), match.start())
        if not word:
            continue
        if ("'" in word or "’" in word) and (clitic := CLITIC.search(word)) and clitic.start() > 0:
            cut = first + clitic.start()
            words += [(word[: clitic.start()], first, cut), (clitic.group(), cut, last)]
        else:
            words.append((word, first, last))
    return words


def _trim_invisible(word: str, start: int) -> Word:
    """The word without invisible characters at its ends (empty when it holds nothing else)."""
    stripped = word.strip(INVISIBLE_CHARS)
    left = len(word) - len(word.lstrip(INVISIBLE_CHARS)) if stripped else 0
    return stripped, start + left, start + left + len(stripped)


def split_sentences(text: str, words: list[Word], terminators: bool = True) -> list[Sentence]:
    """Cut a text's words (from `split_words`) into sentences at line breaks and, with `terminators`, after
    sentence-final punctuation; see the module docstring for the rules."""
    if not words:
        return []
    # Only a word ending in a terminator or closing mark, or one before a line break, can end a sentence.
    candidates = {i for i in range(len(words) - 1) if terminators and words[i][0][-1] in ENDINGS}
    starts = [start for _, start, _ in words]
    for line_break in LINE_BREAK.finditer(text, words[0][2], words[-1][1]):
        candidates.add(bisect.bisect_right(starts, line_break.start()) - 1)
    sentences: list[Sentence] = []
    first = 0
    for i in sorted(candidates):
        if _ends_sentence(text, words, first, i):
            sentences.append(Sentence(first, i + 1, words[first][1], words[i][2]))
            first = i + 1
    sentences.append(Sentence(first, len(words), words[first][1], words[-1][2]))
    return sentences


def _ends_sentence(text: str, words: list[Word], first: int, i: int) -> bool:
    """Whether a sentence that began at word `first` ends after word `i` (a following word exists)."""
    _, _, end = words[i]
    next_start = words[i + 1][1]
    gap = text[end:next_start]
    if LINE_BREAK.search(gap):
        return True
    if not gap or words[i][0][-1] not in ENDINGS:  # no gap: a closing mark follows, the sentence ends after it
        return False
    j = i
    while j > first and CLOSING.fullmatch(words[j][0]) and words[j - 1][2] == words[j][1]:
        j -= 1
    if j == first or TERMINATOR.fullmatch(words[j][0]) is None:  # a text may open with "..."
        return False
    k = i + 1  # the next sentence starts with a capital or a digit, maybe after opening quotes and brackets
    while k < len(words) and OPENING.fullmatch(words[k][0]) and not LINE_BREAK.search(text[words[i][2] : words[k][1]]):
        k += 1
    return k < len(words) and (words[k][0][0].isupper() or words[k][0][0].isdigit())
