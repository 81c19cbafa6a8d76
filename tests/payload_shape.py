"""Whether a decoded JSON document has the shape a ``pi_mqtt_gpio.payloads`` TypedDict says:
its required keys, no others than its optional ones, and values of the annotated types
(nested TypedDicts, lists, unions, literals; ``Any`` and ``object`` take anything)."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


def conforms(doc: Any, td: Any, where: str = "") -> None:
    """Assert that ``doc`` is a ``td`` (a TypedDict class)."""
    where = where or td.__name__
    assert isinstance(doc, dict), f"{where}: {doc!r} is not an object"
    keys = set(doc)
    missing = td.__required_keys__ - keys
    assert not missing, f"{where}: missing {sorted(missing)}"
    unknown = keys - td.__required_keys__ - td.__optional_keys__
    assert not unknown, f"{where}: unknown {sorted(unknown)}"
    hints = get_type_hints(td)
    for key, value in doc.items():
        _value(value, hints[key], f"{where}.{key}")


def _value(value: Any, hint: Any, where: str) -> None:
    if hint is Any or hint is object:
        return
    if typing.is_typeddict(hint):
        conforms(value, hint, where)
        return
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        problems = []
        for arg in args:
            try:
                _value(value, arg, where)
                return
            except AssertionError as exc:
                problems.append(str(exc))
        raise AssertionError(f"{where}: {value!r} is none of {args}: {problems}")
    if origin is Literal:
        assert value in args, f"{where}: {value!r} not one of {args}"
        return
    if origin is list:
        assert isinstance(value, list), f"{where}: {value!r} is not a list"
        for i, item in enumerate(value):
            _value(item, args[0], f"{where}[{i}]")
        return
    if origin is dict:
        assert isinstance(value, dict), f"{where}: {value!r} is not an object"
        return
    if hint is type(None):
        assert value is None, f"{where}: {value!r} is not null"
        return
    if hint is float:
        assert isinstance(value, int | float) and not isinstance(value, bool), \
            f"{where}: {value!r} is not a number"
        return
    assert isinstance(value, hint) and (hint is bool or not isinstance(value, bool)), \
        f"{where}: {value!r} is not a {hint.__name__}"
