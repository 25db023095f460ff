"""The JSON body decoder shared by /choice and /collect: strict, bounded, never a crash."""

from __future__ import annotations

import pytest

from consentmw.web.http import HTTPProblem, parse_json


@pytest.mark.parametrize("body,reason", [
    (b"[" * 9 + b"]" * 9, "nested deeper than 8"),
    (b'{"a":' * 9 + b"1" + b"}" * 9, "nested deeper than 8"),
    (b"[" * 100_000, "nested deeper than 8"),          # the C decoder's own recursion guard
    (b'{"events": [NaN]}', "invalid JSON"),
    (b'{"a": Infinity}', "invalid JSON"),
    (b"\xff\xfe{}", "invalid JSON"),
    (b"", "empty body"),
    (b"{", "invalid JSON"),
])
def test_bad_bodies_are_refused_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(HTTPProblem, match=reason) as info:
        parse_json(body)
    assert info.value.status == 400


def test_nesting_up_to_the_limit_and_strings_that_look_nested_are_fine() -> None:
    assert parse_json(b"[" * 8 + b"]" * 8) == [[[[[[[[]]]]]]]]
    assert parse_json(b'{"s": "[[[[[[[[[[[[{{{{"}') == {"s": "[[[[[[[[[[[[{{{{"}
