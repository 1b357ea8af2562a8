"""TOTP codes against oathtool (RFC 6238), and the step logic that refuses replays."""

from __future__ import annotations

import os
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sekisho.errors import TotpSeedRejected
from sekisho.factors import totp
from sekisho.factors.totp import TotpSeed

RFC_SEED = b"12345678901234567890"


def oathtool(seed: TotpSeed, at: int) -> str:
    args = ["oathtool", "--totp" + ("" if seed.algorithm == "sha1" else f"={seed.algorithm.upper()}"), "-b",
            f"--now=@{at}", f"--digits={seed.digits}", f"--time-step-size={seed.period}s", seed.base32]
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()


def test_rfc6238_vector() -> None:
    seed = TotpSeed(secret=RFC_SEED, digits=8)
    assert seed.code_at(59) == "94287082"
    assert oathtool(seed, 59) == "94287082"


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha512"])
@pytest.mark.parametrize("digits", [6, 8])
def test_codes_match_oathtool(algorithm: str, digits: int) -> None:
    for _ in range(5):
        seed = TotpSeed(secret=os.urandom(20 if algorithm == "sha1" else 32), digits=digits, algorithm=algorithm,
                        period=30 if digits == 6 else 60)
        at = int.from_bytes(os.urandom(4), "big")
        assert seed.code_at(at) == oathtool(seed, at)


@given(now=st.integers(10**6, 10**10), offset=st.integers(-4, 4), last=st.one_of(st.none(), st.integers(-3, 3)),
       drift=st.integers(0, 2))
def test_accept_takes_fresh_steps_within_the_window_only(now: int, offset: int, last, drift: int) -> None:
    seed = TotpSeed(secret=RFC_SEED)
    step_now = seed.step_at(now)
    target = step_now + offset
    last_step = None if last is None else step_now + last
    got = totp.accept(seed, seed.code_at_step(target), now, last_step, drift=drift)
    in_window = abs(offset) <= drift
    fresh = last_step is None or target > last_step
    if in_window and fresh:
        # Another step in the window may share the code by chance; the newest match wins.
        assert got is not None and got >= target
    elif got is not None:
        # Only a chance collision with another fresh step in the window can match.
        assert seed.code_at_step(got) == seed.code_at_step(target) and got != target


def test_codes_of_the_wrong_shape_never_match() -> None:
    seed = TotpSeed(secret=RFC_SEED)
    code = seed.code_at(1000)
    for bad in (code[:-1], code + "0", "abcdef", "", "-" + code[1:]):
        assert totp.matching_step(seed, bad, 1000) is None
    assert totp.matching_step(seed, f"{code[:3]} {code[3:]}", 1000) == seed.step_at(1000)


def test_seed_rules() -> None:
    with pytest.raises(TotpSeedRejected, match="128 bits"):
        TotpSeed(secret=os.urandom(10))
    with pytest.raises(TotpSeedRejected):
        TotpSeed.from_base32("not base32!")
    with pytest.raises(TotpSeedRejected):
        TotpSeed.from_hex("zz")
    assert TotpSeed.from_base32("gezd gnbv gy3t qojq gezd gnbv gy3t qojq").secret == RFC_SEED
    assert TotpSeed.from_hex(RFC_SEED.hex()).secret == RFC_SEED
    assert len(TotpSeed.generate().secret) * 8 >= 160


def test_seed_repr_and_uri() -> None:
    seed = TotpSeed(secret=RFC_SEED)
    assert seed.base32 not in repr(seed)
    uri = seed.provisioning_uri(account="K10234")
    assert uri.startswith("otpauth://totp/") and "issuer=Sekisho" in uri
