"""Find personal data (PII) in ingested text and redact, tokenise or reject it before storage."""

from __future__ import annotations

import bisect
import enum
import hashlib
import hmac
import ipaddress
import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from silolearn.errors import ConfigError


class PiiKind(enum.StrEnum):
    EMAIL = "email"
    PHONE = "phone"
    CARD = "card"
    IBAN = "iban"
    IP = "ip"
    NATIONAL_ID = "national_id"


class MinimisationPolicy(enum.StrEnum):
    REDACT = "redact"
    TOKENIZE = "tokenize"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class Finding:
    kind: PiiKind
    start: int  # character offsets into the original text, end exclusive
    end: int


# Shared edges for the digit-based detectors. A number glued to a word, a URL path, a handle, a
# hashtag, a currency or percent sign, or to another number through a decimal point, thousands
# separator, time colon or range dash is an identifier or an amount, not personal data.
# The start test goes right after a pattern's first character (hence the "." in it), not before
# it: a pattern that opens with a character class lets `re` skip to candidate characters instead
# of evaluating the lookbehind at every position, which is several times faster.
_NUM_START = r"(?<![\w+/#@$£€¥%=&.-].)(?<![0-9][,:].)"
_NUM_END = r"(?![\w+%@]|[/.,:-][0-9])"

_DIGIT = re.compile(r"[0-9]")

_EMAIL = re.compile(
    r"[A-Za-z0-9._%+-](?<![\w.%+-].)[A-Za-z0-9._%+-]*@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+(?P<tld>[A-Za-z]{2,63})(?![\w-])"
)
# Retina asset names such as "logo@2x.png" have the shape of an address; no real TLD is one.
_FILE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp"})

# A run of digit groups separated by one space, dot or dash, where a group may be a parenthesised
# area code; bounded group sizes and counts keep every attempt short so the scan stays linear.
_PHONE_GROUP = r"(?:\([0-9]{1,5}\)[ .-]?|[0-9]{1,12}(?:[ .-]|(?=\()))"
_PHONE = re.compile(
    # A slash may precede an international number: "+242 373 8956/+1 800 992 3483".
    r"(?:\+(?<![\w+#@$£€¥%=&.-].)(?:[0-9]{7,15}|" + _PHONE_GROUP + r"{1,7}[0-9]{1,12})"
    r"|\(" + _NUM_START + r"[0-9]{1,5}\)[ .-]?" + _PHONE_GROUP + r"{0,6}[0-9]{1,12}"
    r"|[0-9]"
    + _NUM_START
    + r"[0-9]{0,11}(?:[ .-]|(?=\())"
    + _PHONE_GROUP
    + r"{0,6}[0-9]{1,12})"
    + _NUM_END
)
_PHONE_PART = re.compile(r"\((?P<paren>[0-9]+)\)|(?P<plain>[0-9]+)")
_TRUNK_AREA = re.compile(r"0[1-9][0-9]{0,3}")
_DATE_HEAD = re.compile(r"[0-9]{1,2}[ .-][0-9]{1,2}[ .-](?:19|20)[0-9]{2}")
# National significant number lengths for country codes whose plans are closed, so digits that
# merely follow the number ("+44 20 7946 0958 24 hours") are not swallowed into it.
_NSN_LENGTHS: dict[str, tuple[int, ...]] = {
    "1": (10,),
    "7": (10,),
    "31": (9,),
    "33": (9,),
    "34": (9,),
    "41": (9,),
    "44": (9, 10),
    "45": (8,),
    "47": (8,),
    "48": (9,),
    "351": (9,),
}

_CARD = re.compile(
    r"[0-9]"
    + _NUM_START
    + r"(?:[0-9]{12,18}|[0-9]{3}(?P<sep>[ -])[0-9]{3,6}(?:(?P=sep)[0-9]{1,6}){1,3})"
    + _NUM_END
)

_IBAN = re.compile(
    r"[A-Z](?<!\w.)[A-Z][0-9]{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,3})?)\b"
)
_IBAN_LENGTHS: dict[str, int] = {
    "DE": 22,
    "GB": 22,
    "FR": 27,
    "NL": 18,
    "ES": 24,
    "IT": 27,
    "BE": 16,
    "CH": 21,
    "AT": 20,
    "IE": 22,
    "PL": 28,
    "SE": 24,
    "NO": 15,
    "DK": 18,
    "FI": 18,
    "PT": 25,
    "LU": 20,
}

_IPV4 = re.compile(r"[0-9](?<![\w.].)[0-9]{0,2}\.(?:[0-9]{1,3}\.){2}[0-9]{1,3}(?![\w]|\.[0-9])")
# Possessive repeats: an address is the maximal run of colon groups, so nothing is gained by
# trying shorter ones, and refusing to backtrack keeps long colon runs cheap.
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}+"
    r"(?:(?:[0-9]{1,3}\.){3}[0-9]{1,3}|[0-9A-Fa-f]{1,4})?+"
    r"(?![\w:]|\.[0-9A-Za-z])"
)
_HEX_GROUP = re.compile(r"[0-9A-Fa-f]+")

_SSN = re.compile(
    r"(?P<area>[0-9]"
    + _NUM_START
    + r"[0-9]{2})(?P<sep>[ -])(?P<group>[0-9]{2})(?P=sep)(?P<serial>[0-9]{4})"
    + _NUM_END
)
# HMRC never issues D, F, I, Q, U or V first, nor D, F, I, O, Q, U or V second.
_NINO = re.compile(
    r"(?P<prefix>[A-CEGHJ-PR-TW-Z](?<!\w.)[A-CEGHJ-NPR-TW-Z])"
    r"(?P<sep> ?)[0-9]{2}(?:(?P=sep)[0-9]{2}){2}(?P=sep)[A-D]\b"
)
_NINO_UNUSED_PREFIXES = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})

# Checksummed kinds win any overlap; then the longer span; then the more specific kind.
_CHECKSUMMED = frozenset({PiiKind.CARD, PiiKind.IBAN})
_SPECIFICITY: dict[PiiKind, int] = {
    PiiKind.CARD: 5,
    PiiKind.IBAN: 4,
    PiiKind.EMAIL: 3,
    PiiKind.IP: 2,
    PiiKind.NATIONAL_ID: 1,
    PiiKind.PHONE: 0,
}

_SEPARATORS = str.maketrans("", "", " .-")
_PHONE_PUNCTUATION = str.maketrans("", "", " .-()")


def _longest_valid(value: str, sep: str, is_valid: Callable[[str], bool]) -> str | None:
    """The longest prefix of `value` ending at a `sep` boundary that is valid, if any.

    Group-formatted numbers are often followed by an unrelated group ("4111 1111 1111 1111 123"),
    which the greedy pattern takes in; dropping whole trailing groups recovers the number.
    """
    while not is_valid(value):
        if not sep or sep not in value:
            return None
        value = value.rsplit(sep, 1)[0]
    return value


def _emails(text: str) -> Iterator[Finding]:
    for match in _EMAIL.finditer(text):
        if match["tld"].lower() not in _FILE_EXTENSIONS:
            yield Finding(PiiKind.EMAIL, match.start(), match.end())


class _Group(NamedTuple):
    """One digit group of a phone candidate, with its offsets in the candidate."""

    digits: str
    parenthesised: bool
    start: int
    end: int


def _phone_groups(candidate: str) -> list[_Group]:
    return [
        _Group(m["paren"] or m["plain"], m["paren"] is not None, m.start(), m.end())
        for m in _PHONE_PART.finditer(candidate)
    ]


def _international_phone(groups: Sequence[_Group]) -> bool:
    if len(groups) == 1:
        digits = groups[0].digits
        if groups[0].parenthesised or digits[0] == "0":
            return False
        for cc_len in (1, 2, 3):
            allowed = _NSN_LENGTHS.get(digits[:cc_len])
            if allowed is not None:
                return len(digits) - cc_len in allowed
        return 7 <= len(digits) <= 15
    country = groups[0]
    if country.parenthesised or len(country.digits) > 3 or country.digits[0] == "0":
        return False
    # "(0)" is the trunk prefix domestic callers dial; it is not part of the number.
    national = sum(len(g.digits) for g in groups[1:] if not (g.parenthesised and g.digits == "0"))
    allowed = _NSN_LENGTHS.get(country.digits)
    if allowed is not None:
        return national in allowed
    return 7 <= len(country.digits) + national <= 15


def _north_american(groups: Sequence[_Group]) -> bool:
    """[1] NXX NXX XXXX, where only the area code may be parenthesised."""
    if len(groups) == 4 and groups[0].digits == "1" and not groups[0].parenthesised:
        groups = groups[1:]
    return (
        [len(g.digits) for g in groups] == [3, 3, 4]
        and not groups[1].parenthesised
        and not groups[2].parenthesised
        and groups[0].digits[0] not in "01"
        and groups[1].digits[0] not in "01"
    )


def _european(groups: Sequence[_Group]) -> bool:
    """A trunk "0" area code, then plain groups of two digits or more."""
    return (
        _TRUNK_AREA.fullmatch(groups[0].digits) is not None
        and all(not g.parenthesised and len(g.digits) >= 2 for g in groups[1:])
        and 8 <= sum(len(g.digits) for g in groups) <= 12
    )


def _one_separator_style(groups: Sequence[_Group], candidate: str) -> bool:
    # "01.02.2017 12" is a date and a count. Only the area code may stand apart, by parentheses
    # or its own separator: "(415) 555-2671", "021-455 8510".
    separators = {
        candidate[left.end : right.start]
        for left, right in itertools.pairwise(groups[1:])
        if not left.parenthesised
    }
    return len(separators) <= 1


def _phone_length(candidate: str) -> int | None:
    """Length of the longest prefix of `candidate` that is a phone number, None if none is."""
    groups = _phone_groups(candidate)
    if candidate.startswith("+"):
        for count in range(len(groups), 0, -1):
            if _international_phone(groups[:count]):
                return groups[count - 1].end
        return None
    # "04-12-2017-0098": a leading day, month and year make a date, whatever follows.
    if _DATE_HEAD.match(candidate):
        return None
    for count in range(len(groups), 1, -1):
        prefix = groups[:count]
        if (_north_american(prefix) or _european(prefix)) and _one_separator_style(
            prefix, candidate
        ):
            return prefix[-1].end
    return None


def _phones(text: str) -> Iterator[Finding]:
    # Not finditer: a rejected candidate ("2017-02-07 415-555-2671") may still contain a number,
    # so the scan resumes just after a rejected start rather than after the whole candidate.
    pos = 0
    while (match := _PHONE.search(text, pos)) is not None:
        length = _phone_length(match.group())
        if length is None:
            pos = match.start() + 1
        else:
            yield Finding(PiiKind.PHONE, match.start(), match.start() + length)
            pos = match.start() + length


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        value = int(char) * (2 if i % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def _plausible_iin(digits: str) -> bool:
    """Whether the issuer prefix and length fit a payment network (Visa, Mastercard, Amex, ...)."""
    length = len(digits)
    head = digits[:2]
    match digits[0]:
        case "2":
            return 2221 <= int(digits[:4]) <= 2720 and length == 16
        case "3":
            if head in ("34", "37"):
                return length == 15
            if head == "35":
                return length >= 16
            return head in ("30", "36", "38", "39") and length >= 14
        case "4":
            return length in (13, 16, 19)
        case "5":
            return length == 16 if head in ("51", "52", "53", "54", "55") else length >= 13
        case "6":
            return True
        case _:
            return False


def _is_card(value: str) -> bool:
    digits = value.translate(_SEPARATORS)
    return 13 <= len(digits) <= 19 and _plausible_iin(digits) and _luhn_ok(digits)


def _cards(text: str) -> Iterator[Finding]:
    for match in _CARD.finditer(text):
        card = _longest_valid(match.group(), match["sep"] or "", _is_card)
        if card is not None:
            yield Finding(PiiKind.CARD, match.start(), match.start() + len(card))


def _is_iban(value: str) -> bool:
    compact = value.replace(" ", "")
    expected = _IBAN_LENGTHS.get(compact[:2])
    if not (len(compact) == expected if expected else 15 <= len(compact) <= 34):
        return False
    bban = compact[4:]
    # Every national account format is mostly digits; an all-caps headline after "MH17" is not.
    if 2 * sum(c.isdigit() for c in bban) < len(bban):
        return False
    return int("".join(str(int(c, 36)) for c in bban + compact[:4])) % 97 == 1


def _ibans(text: str, shapes: Sequence[tuple[int, int]]) -> Iterator[Finding]:
    for start, end in shapes:
        iban = _longest_valid(text[start:end], " ", _is_iban)
        if iban is not None:
            yield Finding(PiiKind.IBAN, start, start + len(iban))


def _ipv4s(text: str) -> Iterator[Finding]:
    for match in _IPV4.finditer(text):
        try:
            ipaddress.IPv4Address(match.group())
        except ValueError:
            continue
        yield Finding(PiiKind.IP, match.start(), match.end())


def _ipv6s(text: str) -> Iterator[Finding]:
    for match in _IPV6.finditer(text):
        # A lone "::" or "a::b" is far more often punctuation or code than an address; real
        # ones carry a routing prefix or interface id of three hex digits or more.
        groups = _HEX_GROUP.findall(match.group())
        if len(groups) < 2 or max(len(group) for group in groups) < 3:
            continue
        try:
            ipaddress.IPv6Address(match.group())
        except ValueError:
            continue
        yield Finding(PiiKind.IP, match.start(), match.end())


def _ssns(text: str) -> Iterator[Finding]:
    for match in _SSN.finditer(text):
        area = match["area"]
        if area in ("000", "666") or area[0] == "9":
            continue
        if match["group"] == "00" or match["serial"] == "0000":
            continue
        yield Finding(PiiKind.NATIONAL_ID, match.start(), match.end())


def _ninos(text: str) -> Iterator[Finding]:
    for match in _NINO.finditer(text):
        if match["prefix"] not in _NINO_UNUSED_PREFIXES:
            yield Finding(PiiKind.NATIONAL_ID, match.start(), match.end())


_OTHER_DIGIT_DETECTORS: tuple[Callable[[str], Iterator[Finding]], ...] = (
    _cards,
    _ipv4s,
    _ssns,
    _ninos,
)


def _precedence(finding: Finding) -> tuple[bool, int, int, int]:
    return (
        finding.kind not in _CHECKSUMMED,
        finding.start - finding.end,
        -_SPECIFICITY[finding.kind],
        finding.start,
    )


def _without_overlaps(candidates: list[Finding]) -> list[Finding]:
    starts: list[int] = []
    kept: list[Finding] = []
    for finding in sorted(candidates, key=_precedence):
        i = bisect.bisect_right(starts, finding.start)
        if i > 0 and kept[i - 1].end > finding.start:
            continue
        if i < len(kept) and kept[i].start < finding.end:
            continue
        starts.insert(i, finding.start)
        kept.insert(i, finding)
    return kept


def detect(text: str) -> list[Finding]:
    """All PII spans, sorted by start, non-overlapping.

    When two detectors overlap the longer / more specific one is kept: card and iban beat phone
    and national_id.
    """
    candidates: list[Finding] = []
    if "@" in text:
        candidates.extend(_emails(text))
    if "::" in text or text.count(":") >= 7:
        candidates.extend(_ipv6s(text))
    if _DIGIT.search(text) is not None:
        iban_shaped = [match.span() for match in _IBAN.finditer(text)]
        candidates.extend(_ibans(text, iban_shaped))
        # Digit groups inside an IBAN-shaped run that fails its checks are a mistyped or made-up
        # account number, not a phone number.
        candidates.extend(
            phone
            for phone in _phones(text)
            if not any(start < phone.end and phone.start < end for start, end in iban_shaped)
        )
        for detector in _OTHER_DIGIT_DETECTORS:
            candidates.extend(detector(text))
    return _without_overlaps(candidates)


@dataclass(frozen=True, slots=True)
class MinimisationResult:
    text: str  # the minimised text (unchanged when nothing was found or policy is REJECT)
    counts: dict[PiiKind, int]  # findings per kind (only kinds with >0)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _normalised(kind: PiiKind, value: str) -> str:
    """The form under which two spellings of one value get one token, so tokens stay joinable."""
    match kind:
        case PiiKind.EMAIL:
            return value.casefold()
        case PiiKind.IP:
            return str(ipaddress.ip_address(value))
        case PiiKind.IBAN:
            return value.translate(_SEPARATORS).upper()
        case PiiKind.PHONE:
            return value.translate(_PHONE_PUNCTUATION)
        case PiiKind.CARD | PiiKind.NATIONAL_ID:
            return value.translate(_SEPARATORS)


class Minimiser:
    """Applies one tenant's minimisation policy to ingested text."""

    __slots__ = ("_policy", "_token_key")

    def __init__(self, *, policy: MinimisationPolicy, token_key: bytes) -> None:
        # An empty HMAC key makes tokens a plain hash anyone can reverse by enumerating values.
        if policy is MinimisationPolicy.TOKENIZE and not token_key:
            raise ConfigError("the tokenize PII policy needs a non-empty token key")
        self._policy = policy
        self._token_key = token_key

    @property
    def policy(self) -> MinimisationPolicy:
        return self._policy

    def apply(self, text: str) -> MinimisationResult:
        """Minimise `text` under the policy.

        REDACT replaces each span by "[EMAIL]", "[PHONE]", "[CARD]", "[IBAN]", "[IP]" or
        "[NATIONAL_ID]". TOKENIZE replaces each span by "[EMAIL:<12 hex>]" etc. where the hex is
        HMAC-SHA256(token_key, kind + "\\x00" + normalised value) truncated: equal values after
        normalisation (emails case-folded; phone/card/iban/national id with spaces, dots and dashes
        removed, and phone parentheses too, iban upper-cased; IPs canonicalised with the ipaddress
        module) give equal tokens, so tokens stay joinable; different keys give different tokens.
        REJECT leaves the text as is and just reports counts (the caller rejects the record when
        total > 0).
        """
        findings = detect(text)
        counts = dict(Counter(finding.kind for finding in findings))
        if self._policy is MinimisationPolicy.REJECT or not findings:
            return MinimisationResult(text, counts)
        pieces: list[str] = []
        cursor = 0
        for finding in findings:
            pieces.append(text[cursor : finding.start])
            pieces.append(self._replacement(finding.kind, text[finding.start : finding.end]))
            cursor = finding.end
        pieces.append(text[cursor:])
        return MinimisationResult("".join(pieces), counts)

    def _replacement(self, kind: PiiKind, value: str) -> str:
        label = kind.value.upper()
        if self._policy is MinimisationPolicy.REDACT:
            return f"[{label}]"
        message = f"{kind.value}\x00{_normalised(kind, value)}".encode()
        digest = hmac.new(self._token_key, message, hashlib.sha256).hexdigest()
        return f"[{label}:{digest[:12]}]"
