"""YAML values checked against, and converted to, the type annotations of config fields.

`convert(value, hint)` accepts what YAML parses (ints for floats, "1e-3" strings that
YAML 1.1 leaves unparsed, lists for tuples) and raises `TypeError` for anything else;
the caller (`detector.config.schema`) names the key in its error message.
"""

import math
from types import UnionType
from typing import Any, get_args, get_origin


def convert(value: Any, hint: Any) -> Any:
    """Return `value` as type `hint`, or raise TypeError if it is not one."""
    origin = get_origin(hint)
    if origin is UnionType:
        for arm in get_args(hint):
            try:
                return convert(value, arm)
            except TypeError:
                continue
        raise TypeError
    if origin is list:
        if not isinstance(value, list | tuple):
            raise TypeError
        return [convert(item, get_args(hint)[0]) for item in value]
    if isinstance(value, bool) != (hint is bool):
        raise TypeError
    if hint is float:
        return to_float(value)
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, hint):
        return value
    raise TypeError


def to_float(value: Any) -> float:
    """Return a finite float from an int, float or numeric string, or raise TypeError."""
    if isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" (no dot) as a string.
            value = float(value)
        except ValueError:
            raise TypeError from None
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError
    return float(value)
