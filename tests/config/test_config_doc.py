"""docs/config.md lists every config key with its real default and rule: it cannot drift
from detector/config/schema.py and rules.py."""

import re
from pathlib import Path

import yaml

from detector.config.rules import RULES
from detector.config.schema import Config, config_to_dict

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"
ROW = re.compile(
    r"^\| `(?P<key>[a-z_]+\.[a-z_]+)` \| `(?P<default>[^`]*)` \| (?P<accepts>[^|]*) \|"
)


def documented(doc: Path = DOC) -> dict[str, dict[str, str]]:
    """{dotted key: {"default": text, "accepts": text}} of the doc's table rows."""
    rows = {}
    for line in doc.read_text(encoding="utf-8").splitlines():
        if match := ROW.match(line):
            assert match["key"] not in rows, f"{match['key']} listed twice"
            rows[match["key"]] = {"default": match["default"], "accepts": match["accepts"].strip()}
    return rows


def test_every_key_is_documented_with_its_default_and_rule():
    rows = documented()
    keys = {
        f"{s}.{k}": v for s, section in config_to_dict(Config()).items() for k, v in section.items()
    }
    assert sorted(rows) == sorted(keys), "docs/config.md and the schema list other keys"
    for key, value in keys.items():
        assert yaml.safe_load(rows[key]["default"]) == value, f"{key}: default in the doc"
        if key in RULES:
            assert rows[key]["accepts"] == RULES[key][1], f"{key}: rule in the doc"


def test_the_row_parser_reads_what_a_wrong_row_says(tmp_path):
    text = DOC.read_text(encoding="utf-8")
    wrong = text.replace("| `train.lr` | `0.004` |", "| `train.lr` | `0.01` |")
    assert wrong != text
    (tmp_path / "config.md").write_text(wrong, encoding="utf-8")
    assert yaml.safe_load(documented(tmp_path / "config.md")["train.lr"]["default"]) == 0.01
