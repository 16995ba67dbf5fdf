"""fastjson must agree with the standard library on everything the CPI reads and writes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from boshcpi import fastjson

values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text()),
    lambda kids: st.one_of(st.lists(kids, max_size=5), st.dictionaries(st.text(max_size=10), kids, max_size=5)),
    max_leaves=30,
)


@given(values)
def test_dumps_matches_stdlib(value):
    assert fastjson.dumps(value) == json.dumps(value)
    assert fastjson.dumps(value, sort_keys=True, separators=(",", ":")) == json.dumps(
        value, sort_keys=True, separators=(",", ":")
    )


@given(values)
def test_loads_round_trips(value):
    text = json.dumps(value)
    assert fastjson.loads(text) == json.loads(text)
    assert fastjson.loads(text.encode()) == json.loads(text)
    assert fastjson.loads(b"\xef\xbb\xbf" + text.encode()) == json.loads(text)


@pytest.mark.parametrize("bad", ["", " ", "{-}", "[1,", "{} x", '{"a":1,}', "\x00", "nul", "01", '"\\x"'])
def test_invalid_documents_raise_value_errors(bad):
    with pytest.raises(ValueError):
        fastjson.loads(bad)
    with pytest.raises(ValueError):
        json.loads(bad)


def test_deep_nesting_is_a_value_error_not_a_crash():
    # The standard library raises RecursionError here; a CPI request must get an envelope instead.
    with pytest.raises(ValueError):
        fastjson.loads("[" * 100_000)


def test_non_utf8_bytes_are_invalid():
    with pytest.raises(ValueError):
        fastjson.loads(b"\xff\xfe{")


def test_unserialisable_values_raise_type_error():
    with pytest.raises(TypeError):
        fastjson.dumps({1, 2})
