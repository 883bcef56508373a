"""Reading and checking the parts of dataset spec files, shared by every spec form (ours,
Ultralytics' dataset YAML, darknet's ``obj.data``). Every error names the file and key."""

import difflib
import os
from typing import Any

from detector.utils.safe_yaml import check_size, load_text, short

SPLITS = ("train", "val", "test")


def read_text(path: str, what: str = "dataset spec") -> str:
    """The file's text, with errors that name it (none of its content); a file over
    `detector.utils.safe_yaml.MAX_BYTES` is refused unread."""
    check_size(path, what)
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise ValueError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: {what} expected, found a folder") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the {what} ({e.__class__.__name__})") from None


def parse_yaml(text: str, path: str) -> dict[str, Any]:
    """The top-level mapping of YAML `text` read from `path` (`detector.utils.safe_yaml`'s
    limits apply: no alias bombs, errors without the file's text)."""
    return mapping(load_text(text, path), path, "")


def read_yaml(path: str, what: str = "dataset spec") -> dict[str, Any]:
    """The YAML file's top-level mapping, with errors that name the file."""
    return parse_yaml(read_text(path, what), path)


def mapping(value: Any, path: str, key: str) -> dict[str, Any]:
    """`value` checked to be a mapping; `key` ("" = top level) names it in the error."""
    if not isinstance(value, dict):
        where = f"{key}: " if key else ""
        got = "nothing" if value is None else f"a {type(value).__name__}"
        raise ValueError(f"{path}: {where}expected a mapping, got {got}")
    return value


def reject_unknown(raw: dict[str, Any], valid: tuple[str, ...], path: str, prefix: str) -> None:
    """Raise on the first key of `raw` not in `valid`, naming the closest valid key."""
    for key in raw:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {list(valid)}"
            name = str(key) if len(str(key)) <= 60 else short(str(key))
            raise ValueError(f"{path}: {prefix}{name}: unknown key{hint}")


def class_names(names: Any, path: str, key: str = "names") -> list[str]:
    """A `names:` value as a list: a list of names, or Ultralytics' `{index: name}` map
    whose keys are 0..C-1. Names must be distinct non-empty strings."""
    if isinstance(names, dict):
        keys = sorted(names) if all(_is_int(k) for k in names) else None
        if not names or keys != list(range(len(names))):
            raise ValueError(f"{path}: {key}: map keys must be the indices 0..{len(names) - 1}")
        names = [names[k] for k in keys]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        got = f"a {type(names).__name__}" if not isinstance(names, list) else "an unusable list"
        raise ValueError(f"{path}: {key}: expected a non-empty list of class names, got {got}")
    if not all(n.strip() for n in names):
        raise ValueError(f"{path}: {key}: empty class name")
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: {key}: duplicate class names")
    return names


def class_count(value: Any, path: str, key: str, names: list[str] | None) -> int:
    """A class count (`nc:`, `classes=`): an integer >= 1 that agrees with `names`."""
    if _is_int(value) or (isinstance(value, str) and value.strip().isdigit()):
        count = int(value)
    else:
        count = 0
    if count < 1:
        raise ValueError(f"{path}: {key}: expected a whole number of classes >= 1")
    if names is not None and count != len(names):
        raise ValueError(f"{path}: {key}: {count} classes, but names has {len(names)}")
    return count


def resolve(value: Any, bases: list[str], path: str, key: str) -> str:
    """The path `value` (relative ones tried against each of `bases` in turn) of an
    existing file or folder; ValueError naming `key` and where it was looked for."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{path}: {key}: expected a path")
    tried = list(dict.fromkeys(os.path.normpath(os.path.join(b, value.strip())) for b in bases))
    for candidate in tried:
        if os.path.exists(candidate):
            return candidate
    also = f" (nor {', '.join(tried[1:])})" if len(tried) > 1 else ""
    raise ValueError(f"{path}: {key}: not found: {tried[0]}{also}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# The specs the package ships (detector/data/specs/NAME.yaml), by name: ``--data synthetic``.
PACKAGED_SPECS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "specs")


def resolve_spec_path(path: str) -> str:
    """The absolute path of spec `path`: a file, else a packaged spec's name ("synthetic",
    "synthetic.yaml") when no such file exists, else `path` (its reader names it)."""
    if not os.path.exists(path) and os.sep not in path:
        packaged = os.path.join(PACKAGED_SPECS, path.removesuffix(".yaml") + ".yaml")
        if os.path.isfile(packaged):
            return packaged
    return os.path.abspath(path)


def spec_folder(path: str) -> str:
    """What a spec's relative paths are relative to: its own folder, except for a packaged
    spec (inside the installed package), whose data goes under the working directory."""
    folder = os.path.dirname(path)
    return os.getcwd() if folder == PACKAGED_SPECS else folder
