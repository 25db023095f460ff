"""The consent state and the signed `consentmw` cookie codec."""

from __future__ import annotations

import time
from datetime import date

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consentmw.core.consent import (
    COOKIE_NAME, SOURCE_BANNER, SOURCE_DEFAULT, SOURCE_GPC, ConsentCodec, ConsentState, new_id,
)
from consentmw.core.policy import Policy

KEY = "codec-secret-key-0123456789"
OLD_KEY = "older-secret-key-9876543210"
POLICY = Policy.default()
OPTIONAL = sorted(POLICY.optional_ids)
VID = new_id()


@pytest.fixture
def codec() -> ConsentCodec:
    return ConsentCodec(KEY, POLICY)


def other_version(version: str) -> Policy:
    return Policy(version=version, updated=date(2027, 1, 1), purposes=POLICY.purposes,
                  category_texts=POLICY.category_texts, texts=POLICY.texts)


# -- state ------------------------------------------------------------------------
def test_default_state_grants_only_required_and_prompts(codec: ConsentCodec) -> None:
    s = codec.default_state
    assert s.granted == frozenset({"necessary"})
    assert s.allows("necessary") and not s.allows("statistics")
    assert s.prompt and not s.recorded and s.public() is None
    assert s.collecting == frozenset() and s.source == SOURCE_DEFAULT


def test_new_id_is_random_and_cookie_safe() -> None:
    ids = {new_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 16 and all(c.isalnum() or c in "-_" for c in i) for i in ids)


# -- codec round trip ----------------------------------------------------------------
def test_round_trip_all_fields(codec: ConsentCodec) -> None:
    now = time.time()
    value, issued = codec.issue(["statistics", "personalisation"], visitor_id=VID, now=now)
    got = codec.decode(value)
    assert got is not None
    assert got.id == issued.id and len(got.id) == 16
    assert got.granted == frozenset({"necessary", "statistics", "personalisation"})
    assert got.collecting == frozenset({"statistics", "personalisation"})
    assert got.policy_version == POLICY.version
    assert got.given_at == int(now * 1000) / 1000  # milliseconds: a revocation in the same second counts
    assert got.visitor_id == VID
    assert got.source == SOURCE_BANNER and not got.gpc and not got.prompt and got.recorded
    assert abs(got.expires_at - (now + codec.max_age)) < 5
    pub = got.public()
    assert pub is not None and pub["granted"] == ["necessary", "personalisation", "statistics"]


def test_issue_keeps_consent_id_and_marks_gpc_source(codec: ConsentCodec) -> None:
    value, state = codec.issue(["marketing"], gpc=True, consent_id="fixedconsentid00")
    got = codec.decode(value)
    assert got is not None and got.id == "fixedconsentid00" == state.id
    assert got.gpc and got.source == SOURCE_GPC
    assert got.visitor_id is None and got.collecting == frozenset()


def test_issue_rejects_unknown_purpose(codec: ConsentCodec) -> None:
    with pytest.raises(ValueError, match="bogus"):
        codec.issue(["statistics", "bogus"])


def test_cookie_is_compact_with_everything_granted(codec: ConsentCodec) -> None:
    value, _ = codec.issue(POLICY.ids, gpc=True, visitor_id=VID)
    header = f"{COOKIE_NAME}={value}; Max-Age=15552000; Path=/; Domain=.example.com; SameSite=lax; Secure"
    assert len(value) < 200
    assert len(f"{COOKIE_NAME}={value}") < 300
    assert len(header) < 300
    assert all(33 <= ord(c) < 127 and c not in ';,"\\ ' for c in value)


# -- bad cookies are None, never an exception ------------------------------------------
@pytest.mark.parametrize("bad", [
    "", "garbage", "a.b.c", ".", "..", "~~~~~~", "1~x~y~z~1~0~-", "\x00\xff", "é" * 40,
    "x" * 5000, "1~id~2026-11-21~necessary~0~0~-.AAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAA",
])
def test_garbage_is_none(codec: ConsentCodec, bad: str) -> None:
    assert codec.decode(bad) is None


def test_none_is_none(codec: ConsentCodec) -> None:
    assert codec.decode(None) is None


def test_forged_with_other_key_is_none(codec: ConsentCodec) -> None:
    forged, _ = ConsentCodec("attacker-key-0123456789abcdef", POLICY).issue(POLICY.ids)
    assert codec.decode(forged) is None


def test_tampered_payload_is_none(codec: ConsentCodec) -> None:
    value, _ = codec.issue([])
    assert codec.decode(value) is not None
    tampered = value.replace("~necessary~", "~necessary:statistics:marketing~", 1)
    assert tampered != value
    assert codec.decode(tampered) is None


def test_expired_is_none(codec: ConsentCodec) -> None:
    value, _ = codec.issue(["statistics"])
    assert codec.decode(value) is not None  # now cached
    later = time.time() + codec.max_age + 10
    assert codec.decode(value, now=later) is None           # cached entry expires too
    assert ConsentCodec(KEY, POLICY).decode(value, now=later) is None  # and a fresh verify


def test_short_max_age_expires_by_itsdangerous(codec: ConsentCodec) -> None:
    short = ConsentCodec(KEY, POLICY, max_age=1)
    value, _ = codec.issue(["statistics"])
    assert short.decode(value) is not None
    assert ConsentCodec(KEY, POLICY, max_age=1).decode(value, now=time.time() + 5) is None


def test_other_policy_version_is_none(codec: ConsentCodec) -> None:
    old_value, _ = codec.issue(["statistics"])
    newer = ConsentCodec(KEY, other_version("2027-01-01"))
    assert newer.decode(old_value) is None
    new_value, _ = newer.issue(["statistics"])
    assert newer.decode(new_value) is not None
    assert codec.decode(new_value) is None


def test_unknown_purpose_in_signed_payload_is_none() -> None:
    # A cookie signed for a policy with an extra purpose must not grant it here.
    extra = Policy.from_dict({
        "version": POLICY.version, "updated": "2026-11-21",
        "purposes": [{"id": "necessary", "required": True, "texts": {"en": {"title": "N"}}},
                     {"id": "ads", "texts": {"en": {"title": "Ads"}}}]})
    value, _ = ConsentCodec(KEY, extra).issue(["ads"])
    assert ConsentCodec(KEY, POLICY).decode(value) is None


def test_required_purposes_always_granted_even_if_missing_from_cookie(codec: ConsentCodec) -> None:
    # A validly signed payload that omits the required purpose still grants it.
    payload = f"1~consentid0000000~{POLICY.version}~statistics~{int(time.time())}~0~-"
    value = codec._signer.sign(payload).decode()
    got = codec.decode(value)
    assert got is not None and got.granted == frozenset({"necessary", "statistics"})


@pytest.mark.parametrize("payload", [
    "2~cid~{v}~statistics~0~0~-",          # unknown format
    "1~~{v}~statistics~0~0~-",             # empty consent id
    "1~cid~{v}~statistics~notanint~0~-",   # bad given-at
    "1~cid~{v}~statistics~0~0",            # too few fields
    "1~cid~{v}~statistics~0~0~-~extra",    # too many fields
    "1~cid~{v}~statistics:bogus~0~0~-",    # unknown purpose
])
def test_validly_signed_but_malformed_payload_is_none(codec: ConsentCodec, payload: str) -> None:
    value = codec._signer.sign(payload.format(v=POLICY.version)).decode()
    assert codec.decode(value) is None


# -- secret rotation -------------------------------------------------------------------
def test_rotation_first_key_signs_all_verify() -> None:
    old = ConsentCodec(OLD_KEY, POLICY)
    old_value, _ = old.issue(["statistics"])
    rotated = ConsentCodec([KEY, OLD_KEY], POLICY)
    assert rotated.decode(old_value) is not None
    new_value, _ = rotated.issue(["statistics"])
    assert ConsentCodec(KEY, POLICY).decode(new_value) is not None   # signed by the first key
    assert ConsentCodec(OLD_KEY, POLICY).decode(new_value) is None
    # the old key retired: its cookies stop working, the new ones keep working
    retired = ConsentCodec([KEY], POLICY)
    assert retired.decode(old_value) is None
    assert retired.decode(new_value) is not None


@pytest.mark.parametrize("keys", [[], "", [""], ["ok-key-0123456789", ""], [None]])
def test_bad_keys_refused(keys: object) -> None:
    with pytest.raises(ValueError):
        ConsentCodec(keys, POLICY)  # type: ignore[arg-type]


# -- verify cache ----------------------------------------------------------------------
def test_verify_cache_avoids_hmac_and_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    codec = ConsentCodec(KEY, POLICY, cache_size=10)
    values = [codec.issue(["statistics"])[0] for _ in range(25)]
    calls = 0
    real = codec._verify

    def counting(value: str, now: float | None) -> ConsentState | None:
        nonlocal calls
        calls += 1
        return real(value, now)

    monkeypatch.setattr(codec, "_verify", counting)
    first = codec.decode(values[0])
    assert codec.decode(values[0]) is first and calls == 1  # second look-up is a dict hit
    for v in values:
        assert codec.decode(v) is not None
        assert len(codec._cache) <= 10
    assert calls == 25
    assert codec.decode(values[-1]) is not None and calls == 25  # the hot cookie stayed
    assert codec.decode(values[0]) is not None and calls == 26   # the evicted one re-verified


def test_invalid_cookies_are_not_cached(codec: ConsentCodec) -> None:
    for i in range(50):
        assert codec.decode(f"junk{i}") is None
    assert len(codec._cache) == 0


# -- Global Privacy Control -------------------------------------------------------------
def test_gpc_ids_default(codec: ConsentCodec) -> None:
    assert POLICY.gpc_ids == frozenset({"personalisation", "marketing"})


def test_apply_gpc_narrows_a_choice_made_without_gpc(codec: ConsentCodec) -> None:
    value, _ = codec.issue(POLICY.ids, visitor_id=VID)
    state = codec.decode(value)
    assert state is not None
    narrowed = codec.apply_gpc(state)
    assert narrowed.granted == frozenset({"necessary", "statistics"})
    assert narrowed.collecting == frozenset({"statistics"})
    assert narrowed.gpc and narrowed.id == state.id
    assert narrowed.visitor_id is None  # statistics does not keep a visitor id
    assert not narrowed.allows("personalisation") and not narrowed.allows("marketing")


def test_apply_gpc_keeps_explicit_grant_made_under_gpc(codec: ConsentCodec) -> None:
    value, _ = codec.issue(POLICY.ids, gpc=True, visitor_id=VID)
    state = codec.decode(value)
    assert state is not None
    kept = codec.apply_gpc(state)
    assert kept == state
    assert kept.allows("personalisation") and kept.visitor_id == VID


def test_apply_gpc_no_op_without_gpc_purposes(codec: ConsentCodec) -> None:
    value, _ = codec.issue(["statistics"])
    state = codec.decode(value)
    assert state is not None
    assert codec.apply_gpc(state) is state
    assert codec.apply_gpc(codec.default_state) is codec.default_state


def test_apply_gpc_keeps_visitor_id_for_non_gpc_visitor_purpose() -> None:
    pol = Policy.from_dict({
        "version": "v1", "updated": "2026-11-21",
        "purposes": [{"id": "necessary", "required": True, "texts": {"en": {"title": "N"}}},
                     {"id": "stats", "categories": ["visitor_id", "page"], "texts": {"en": {"title": "S"}}},
                     {"id": "ads", "categories": ["visitor_id"], "gpc_opt_out": True,
                      "texts": {"en": {"title": "A"}}}]})
    codec = ConsentCodec(KEY, pol)
    value, _ = codec.issue(["stats", "ads"], visitor_id=VID)
    state = codec.decode(value)
    assert state is not None
    narrowed = codec.apply_gpc(state)
    assert narrowed.granted == frozenset({"necessary", "stats"})
    assert narrowed.visitor_id == VID


def test_needs_visitor_id(codec: ConsentCodec) -> None:
    assert codec.needs_visitor_id(["personalisation"])
    assert not codec.needs_visitor_id(["statistics", "marketing", "necessary"])


# -- properties -------------------------------------------------------------------------
PROPERTY_CODEC = ConsentCodec(KEY, POLICY)


@settings(max_examples=150, deadline=None)
@given(granted=st.sets(st.sampled_from(OPTIONAL)), gpc=st.booleans(),
       vid=st.one_of(st.none(), st.just(VID)),
       now_offset=st.integers(min_value=-86400 * 90, max_value=0))
def test_property_round_trip(granted: set[str], gpc: bool, vid: str | None, now_offset: int) -> None:
    now = time.time() + now_offset
    value, issued = PROPERTY_CODEC.issue(granted, gpc=gpc, visitor_id=vid, now=now)
    got = ConsentCodec(KEY, POLICY).decode(value)  # fresh codec: no cache, real HMAC
    assert got is not None
    assert got.granted == frozenset(granted) | POLICY.required_ids == issued.granted
    assert got.gpc == gpc and got.visitor_id == vid and got.id == issued.id
    assert got.given_at == int(now * 1000) / 1000  # milliseconds: a revocation in the same second counts
    assert len(value) < 200


_VALID, _ = PROPERTY_CODEC.issue(POLICY.ids, visitor_id=VID)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(granted=st.sets(st.sampled_from(OPTIONAL)), gpc=st.booleans(),
       vid=st.one_of(st.none(), st.just(VID)), where=st.floats(min_value=0.0, max_value=1.0),
       replacement=st.integers(min_value=0, max_value=255))
def test_property_any_single_byte_change_rejected(granted: set[str], gpc: bool, vid: str | None,
                                                  where: float, replacement: int) -> None:
    """Any valid cookie, any position: the hypothesis-chosen byte and every other byte value fail."""
    value, _ = PROPERTY_CODEC.issue(granted, gpc=gpc, visitor_id=vid)
    raw = value.encode("ascii")
    pos = min(int(where * len(raw)), len(raw) - 1)
    codec = ConsentCodec(KEY, POLICY)
    assert codec.decode(value) is not None
    for byte in [replacement, *range(256)]:
        if byte == raw[pos]:
            continue
        changed = bytearray(raw)
        changed[pos] = byte
        assert codec.decode(changed.decode("latin-1")) is None, (pos, chr(byte))


def test_every_position_every_base64_char_rejected() -> None:
    """Exhaustive sibling of the property above over the cookie's own alphabet.

    Catches base64 malleability: the signature's last character carries padding bits,
    and a decoder that ignores them would accept four spellings of one signature.
    """
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~:"
    codec = ConsentCodec(KEY, POLICY)
    accepted = [(i, ch) for i in range(len(_VALID)) for ch in alphabet
                if ch != _VALID[i] and codec._verify(_VALID[:i] + ch + _VALID[i + 1:], None) is not None]
    assert accepted == []


def test_new_ids_never_look_like_command_line_options() -> None:
    from consentmw.core.consent import new_id

    ids = [new_id() for _ in range(5000)]
    assert all(len(i) == 16 and not i.startswith("-") for i in ids)
    assert len(set(ids)) == len(ids)
