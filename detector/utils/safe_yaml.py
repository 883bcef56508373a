"""YAML from files a user hands over (configs, dataset specs), read with resource limits.

`yaml.safe_load` builds an alias as a shared reference, so a "billion laughs" file of a
few hundred bytes loads fast, but its value expands to ~10^9 items for whatever walks or
prints it (type checks, error messages). Here a file over `MAX_BYTES` is refused before
it is read, and a document whose aliases would expand it beyond `MAX_NODES` nodes, or
that refers to itself, is refused before any Python object is built. Errors are
`ValueError`s naming the file (and, for aliases, the key where the document goes over:
``model.anchors[5]``); YAML syntax errors give the problem and its line, never
the file's text (`yaml.MarkedYAMLError` quotes the offending line).
"""

import os
import reprlib
from typing import Any

import yaml

MAX_BYTES = 1_000_000
MAX_NODES = 100_000

_SHORT = reprlib.Repr()
_SHORT.maxstring = 60
_SHORT.maxother = 60


def short(value: Any) -> str:
    """``repr(value)`` shortened for a message (`reprlib`: long strings and containers are
    cut with ``...``), so a message never grows with the data."""
    return _SHORT.repr(value)


class _Bounded(Exception):
    """A document over the limits at key path `where` ("" = the whole document);
    `load_text` turns it into a ValueError."""

    def __init__(self, where: str, reason: str):
        super().__init__(reason)
        self.where = where


class _BoundedLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses, once a document's node graph is composed and before
    it is constructed, a graph that aliases expand beyond `MAX_NODES` or a recursive one."""

    def compose_document(self):
        node = super().compose_document()
        _Sizer().size(node)
        return node


class _Sizer:
    """Counts the nodes of a node graph once every alias is copied out (memoised by node,
    so each distinct node is visited once), keeping the key path it is at (``model.anchors
    [5]``) so that `_Bounded` names where the document goes over."""

    def __init__(self):
        self.sizes: dict[int, int] = {}
        self.open_nodes: set[int] = set()
        self.path: list[str] = []

    def size(self, node: yaml.Node) -> int:
        key = id(node)
        if key in self.sizes:
            return self.sizes[key]
        if key in self.open_nodes:
            raise _Bounded(self.where(), "an alias refers to a node that contains it")
        self.open_nodes.add(key)
        total = 1 + sum(self.child(part, child) for part, child in _children(node))
        self.open_nodes.discard(key)
        if total > MAX_NODES:
            raise _Bounded(self.where(), f"aliases expand it beyond {MAX_NODES} values")
        self.sizes[key] = total
        return total

    def child(self, part: str, node: yaml.Node) -> int:
        self.path.append(part)
        total = self.size(node)
        self.path.pop()
        return total

    def where(self) -> str:
        """The key path, e.g. ``model.anchors[5]``; "" at the top of the document."""
        return "".join(self.path).lstrip(".")


def _children(node: yaml.Node) -> list[tuple[str, yaml.Node]]:
    """(path part, child) of a sequence (``[i]``) or mapping (``.key`` for a value,
    ``.key(key)`` for a key itself); none for a scalar."""
    if isinstance(node, yaml.SequenceNode):
        return [(f"[{i}]", child) for i, child in enumerate(node.value)]
    if not isinstance(node, yaml.MappingNode):
        return []
    parts = []
    for key, value in node.value:
        name = key.value if isinstance(key, yaml.ScalarNode) else "?"
        name = name if len(name) <= 60 else name[:57] + "..."
        parts += [(f".{name}(key)", key), (f".{name}", value)]
    return parts


def _syntax_error(error: yaml.YAMLError) -> str:
    """The YAML error's problem and position, without the quoted text of the file."""
    if not isinstance(error, yaml.MarkedYAMLError):
        return type(error).__name__
    problem = error.problem or error.context or "syntax error"
    mark = error.problem_mark or error.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{problem[:100]}{where}"


def load_text(text: str, where: str) -> Any:
    """The value of the YAML document `text`; `where` starts every error message.

    Raises:
        ValueError: invalid YAML, more than one document, aliases expanding it beyond
            `MAX_NODES` nodes, a recursive alias, or nesting too deep for the parser.
    """
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # safe: a SafeLoader subclass
    except _Bounded as error:
        key = f"{error.where}: " if error.where else ""
        raise ValueError(f"{where}: {key}refused: {error}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{where}: not valid YAML: {_syntax_error(error)}") from None
    except RecursionError:
        raise ValueError(f"{where}: refused: nested too deeply") from None


def check_size(path: str, what: str) -> None:
    """ValueError naming `path` if the file is over `MAX_BYTES` (checked before reading)."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return  # the reader reports a missing or unreadable file in its own words
    if size > MAX_BYTES:
        raise ValueError(f"{path}: {what} too large ({size} bytes; at most {MAX_BYTES})")


def load_file(path: str, what: str) -> Any:
    """The YAML value of the file at `path` (a `what`, e.g. "config file"), within the
    limits of this module; errors name the file."""
    check_size(path, what)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ValueError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the {what} ({e.__class__.__name__})") from None
    return load_text(text, path)
