from __future__ import annotations

import pytest

from sekisho.errors import PassphraseRejected
from sekisho.factors import passphrase as pp
from tests.conftest import FAST_ARGON2

CTX = pp.PassphraseContext(user_id="K10234", names=("佐藤 美咲", "サトウ ミサキ"))


@pytest.mark.parametrize(
    ("candidate", "rule"),
    [
        ("short", "too-short"),
        ("123456789", "too-short"),
        ("12345678901234", "all-digits"),
        ("２０２４０４０１１２３", "all-digits"),  # full-width digits are digits too
        ("password", "too-short"),
        ("Password2024!", "common"),
        ("kitahiroshima", "common"),
        ("sakura123456", "common"),
        ("zxcvbnm,./", "sequential"),
        ("abcdefghijk", "sequential"),
        ("zyxwvutsrqp", "sequential"),
        ("aaaaaaaaaaaa", "sequential"),
        ("abababababab", "sequential"),
        ("1985/04/12 ", "date"),
        ("昭和60年04月12日", "date"),
        ("1985年04月12日", "date"),
        ("s60.04.12.1985", None),
        ("K10234-no-pass", "personal"),
        ("わたしは佐藤美咲です", "personal"),
        ("x" * 300, "too-long"),
    ],
)
def test_rules_name_the_one_that_failed(candidate: str, rule: str | None) -> None:
    if rule is None:
        pp.check_passphrase(candidate, minimum=10, context=CTX)
        return
    with pytest.raises(PassphraseRejected) as info:
        pp.check_passphrase(candidate, minimum=10, context=CTX)
    assert info.value.rule == rule
    assert candidate not in str(info.value)


@pytest.mark.parametrize(
    "good", ["sakana ga oyogu kawa 7", "青い空と白い雲の見える町", "Correct horse battery", "tsuki-mi-dango 9"]
)
def test_good_passphrases_pass(good: str) -> None:
    pp.check_passphrase(good, minimum=10, context=CTX)


def test_policy_minimum_is_never_below_the_floor() -> None:
    with pytest.raises(PassphraseRejected, match="at least 10"):
        pp.check_passphrase("kawa 7 go", minimum=4, context=CTX)
    with pytest.raises(PassphraseRejected, match="at least 16"):
        pp.check_passphrase("sakana ga oyogu", minimum=16, context=CTX)


def test_full_width_and_half_width_derive_the_same_key() -> None:
    salt = pp.new_salt()
    a = pp.derive("ｓａｋａｎａ　ｇａ　ｏｙｏｇｕ　７", salt, FAST_ARGON2)
    b = pp.derive("sakana ga oyogu 7", salt, FAST_ARGON2)
    c = pp.derive("sakana ga oyogu 8", salt, FAST_ARGON2)
    assert a == b != c
