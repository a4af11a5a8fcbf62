"""Small SQL building helpers shared by the repositories."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import ColumnElement, Text, any_, literal
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import InstrumentedAttribute


def equals_any(column: ColumnElement[str] | InstrumentedAttribute[str], values: Iterable[str]) -> ColumnElement[bool]:
    """Build `column = ANY(:values)` with the values bound as one text array.

    Unlike `IN (...)`, which binds one parameter per value, this stays below
    PostgreSQL's limit of 65,535 parameters per statement however many values
    there are.
    """
    return column == any_(literal(list(values), ARRAY(Text)))
