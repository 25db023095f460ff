"""A batch of hits seen column by column, and the few vector tools the minimiser needs.

The writer handles thousands of hits at once. Pulling each raw attribute out of the
hits once (one C-level `map` per attribute) and working on whole columns with Arrow and
NumPy costs a fraction of a Python step per hit per stored column. Values that need
Python (user-agent parsing, GeoIP, hashing) are computed once per *distinct* value in
the batch, then spread back over the rows with `take`: a visitor's page views repeat
their address, browser and site, so a batch of 5,000 hits has far fewer distinct values.
"""

from __future__ import annotations

import os
from operator import attrgetter
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from consentmw.core import text

Codes = np.ndarray  # int64 row -> group number, numbered in order of first appearance


class HitColumns:
    """The raw attributes of a batch of hits, each extracted once, when first asked for."""

    def __init__(self, hits: Sequence[Any]) -> None:
        self.hits = hits
        self.size = len(hits)
        self._objects: dict[str, list[Any]] = {}
        self._arrays: dict[str, pa.Array] = {}
        self._numbers: dict[str, np.ndarray] = {}
        self._truthy: dict[str, np.ndarray] = {}
        #: facts worked out once for the whole batch and shared by every table (parsed user agents)
        self.shared: dict[str, Any] = {}

    def objects(self, name: str) -> list[Any]:
        found = self._objects.get(name)
        if found is None:
            found = self._objects[name] = list(map(attrgetter(name), self.hits))
        return found

    def array(self, name: str, kind: pa.DataType | None = None) -> pa.Array:
        found = self._arrays.get(name)
        if found is None:
            found = self._arrays[name] = _array(self.objects(name), kind)
        return found

    def numbers(self, name: str, dtype: Any) -> np.ndarray:
        found = self._numbers.get(name)
        if found is None:
            found = self._numbers[name] = np.fromiter(self.objects(name), dtype=dtype, count=self.size)
        return found

    def truthy(self, name: str) -> np.ndarray:
        """Which hits have the attribute set (not None or empty), as a boolean mask."""
        found = self._truthy.get(name)
        if found is None:
            found = self._truthy[name] = np.fromiter(map(bool, self.objects(name)), dtype=bool, count=self.size)
        return found


def _array(values: list[Any], kind: pa.DataType | None) -> pa.Array:
    """Values as an Arrow array; text is made valid by `consentmw.core.text` on the way.

    Arrow takes str and valid UTF-8 bytes alike without a Python step per value; only a
    batch holding invalid bytes or a lone surrogate pays for decoding them one by one
    (with replacement). NUL and non-characters are valid UTF-8 to Arrow, so one
    vectorised regex pass finds them and only the rows holding one are repaired.
    """
    try:
        array = pa.array(values, type=kind)
    except (pa.ArrowInvalid, UnicodeEncodeError):
        if kind != pa.string():
            raise
        return pa.array([None if v is None else text.decode(v) for v in values], type=kind)
    if kind == pa.string() and _may_hold_invalid(array):
        if pc.any(pc.match_substring_regex(array, text.INVALID_RE2)).as_py():
            repaired = [None if v is None else text.clean(v) for v in array.to_pylist()]
            array = pa.array(repaired, type=kind)
    return array


def _may_hold_invalid(array: pa.Array) -> bool:
    """A fast pre-check over the raw UTF-8 bytes: NUL is byte 0, and every non-character
    starts with byte 0xEF (U+FDD0.., U+FFFE/F) or 0xF0-0xF4 (the other planes)."""
    data = array.buffers()[2] if len(array) else None
    if data is None or not data.size:
        return False
    raw = np.frombuffer(data, dtype=np.uint8)
    return bool(raw.min() == 0 or raw.max() >= 0xEF)


_WHOLE = "memo of the whole batch"


class Selection:
    """Some rows of a batch (one table's rows), with per-selection memory of derived columns."""

    def __init__(self, batch: HitColumns, rows: np.ndarray) -> None:
        self.batch = batch
        self.rows = rows
        self.size = len(rows)
        self._everything = self.size == batch.size
        #: Tables that take every hit of the batch (the usual case: each purpose's table gets
        #: every page view) share one memory, so what they have in common is worked out once.
        self._memo: dict[Any, Any] = batch.shared.setdefault(_WHOLE, {}) if self._everything else {}
        self._indices = pa.array(rows)

    def memo(self, key: Any, compute: Callable[[], Any]) -> Any:
        found = self._memo.get(key)
        if found is None:
            found = self._memo[key] = compute()
        return found

    def array(self, name: str, kind: pa.DataType | None = None) -> pa.Array:
        """A raw attribute as an Arrow array over the selected rows."""
        whole = self.batch.array(name, kind)
        return whole if self._everything else self.memo(("array", name), lambda: whole.take(self._indices))

    def numbers(self, name: str, dtype: Any) -> np.ndarray:
        whole = self.batch.numbers(name, dtype)
        return whole if self._everything else self.memo(("numbers", name), lambda: whole[self.rows])

    def present(self, name: str) -> tuple[np.ndarray, list[Any]]:
        """The selected rows whose attribute is truthy (positions in this selection) and its values.

        For attributes most hits leave empty (campaign tags, beacon payloads).
        """
        def compute() -> tuple[np.ndarray, list[Any]]:
            truthy = self.batch.truthy(name)
            positions = np.flatnonzero(truthy if self._everything else truthy[self.rows]).astype(np.int64)
            rows = positions if self._everything else self.rows[positions]
            values = self.batch.objects(name)
            return positions, [values[row] for row in rows.tolist()]
        return self.memo(("present", name), compute)


def encode(values: pa.Array) -> tuple[Codes, list[Any]]:
    """Each row's distinct-value number, and the distinct values in order of first appearance."""
    encoded = values.dictionary_encode()
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary.to_pylist()


def group(*codes: Codes) -> tuple[Codes, np.ndarray]:
    """Rows grouped by several code columns at once: each row's group, and each group's first row."""
    key = codes[0]
    for more in codes[1:]:
        width = int(more.max()) + 1 if len(more) else 1
        # Renumbered after each step, so the combined key stays below rows * width.
        key = _renumber(key * width + more)
    key = _renumber(key) if len(codes) == 1 else key
    firsts = np.empty(int(key.max()) + 1 if len(key) else 0, dtype=np.int64)
    # Writing in reverse leaves each group's first row (the last write wins).
    firsts[key[::-1]] = np.arange(len(key) - 1, -1, -1)
    return key, firsts


def _renumber(key: np.ndarray) -> Codes:
    return pa.array(key).dictionary_encode().indices.to_numpy(zero_copy_only=False).astype(np.int64)


def spread(values: list[Any], codes: Codes, kind: pa.DataType) -> pa.Array:
    """Per-group values out to every row of the group."""
    return pa.array(values, type=kind).take(pa.array(codes))


def fill(size: int, default: Any, positions: np.ndarray, values: list[Any], kind: pa.DataType) -> pa.Array:
    """`size` rows of `default` except at `positions` (ascending), which take `values`."""
    if not len(positions):
        return pa.nulls(size, kind) if default is None else pa.repeat(pa.scalar(default, kind), size)
    if len(positions) == size:
        return pa.array(values, type=kind)
    # The values and the default as one small array, spread by index: no Python step per row.
    indices = np.full(size, len(values), dtype=np.int64)
    indices[positions] = np.arange(len(values), dtype=np.int64)
    return pa.array([*values, default], type=kind).take(pa.array(indices))


def mask_of(size: int, positions: np.ndarray) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[positions] = True
    return mask


def where(condition: np.ndarray, values: pa.Array, other: Any) -> pa.Array:
    """`values` where `condition` holds, `other` elsewhere (same type)."""
    if condition.all():
        return values
    return pc.if_else(pa.array(condition), values, pa.scalar(other, values.type))


#: where each run of hex digits goes in the 36 characters of a canonical UUID (8-4-4-4-12)
_UUID_RUNS = ((0, 0, 8), (9, 8, 12), (14, 12, 16), (19, 16, 20), (24, 20, 32))


def uuid4_array(n: int) -> pa.Array:
    """`n` random version 4 UUIDs as canonical strings, built without a Python step per UUID."""
    raw = np.frombuffer(os.urandom(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40      # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80      # RFC 4122 variant
    digits = np.frombuffer(raw.tobytes().hex().encode("ascii"), dtype=np.uint8).reshape(n, 32)
    text = np.full((n, 36), ord("-"), dtype=np.uint8)
    for at, first, last in _UUID_RUNS:
        text[:, at:at + last - first] = digits[:, first:last]
    offsets = np.arange(0, 36 * (n + 1), 36, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(text.tobytes()))
