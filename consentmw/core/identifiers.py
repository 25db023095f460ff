"""ClickHouse identifiers named by operators (database, cluster, table): checked, never quoted.

Operator input ends up inside SQL text (`FROM {database}.{table}`), where parameters
cannot go; a strict pattern is what keeps `--table "x WHERE 0 UNION ALL SELECT ..."` out.
"""

from __future__ import annotations

import re

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def is_identifier(name: object) -> bool:
    return isinstance(name, str) and _IDENT.fullmatch(name) is not None


def check_identifier(name: str, what: str) -> str:
    """`name` if it is a plain identifier (letters, digits, '_'; at most 64), else ValueError."""
    if not is_identifier(name):
        raise ValueError(f"{what} {str(name)[:80]!r} is not a valid ClickHouse identifier "
                         "(letters, digits and '_', not starting with a digit, at most 64)")
    return name
