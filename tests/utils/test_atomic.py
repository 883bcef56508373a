"""detector.utils.atomic: atomic writers get the umask's permissions and never leave half a file."""

import json
import os

import pytest

from detector.config.schema import load_config, save_config
from detector.utils.atomic import (
    atomic_path,
    atomic_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)


@pytest.fixture
def umask():
    """Sets the process umask for one test; restores the previous one after it."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


def _save_with_open(path: str) -> None:
    with open(path, "wb") as f:
        f.write(b"saved")


WRITERS = {
    "bytes": lambda p: atomic_write_bytes(p, b"\x00\x01"),
    "text": lambda p: atomic_write_text(p, "text"),
    "json": lambda p: atomic_write_json(p, {"a": 1}),
    "save": lambda p: atomic_save(p, _save_with_open, suffix=".keras"),
    "save_config": lambda p: save_config(load_config(), p),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_file_gets_the_umask_permissions(tmp_path, umask, writer, mask, mode):
    umask(mask)
    path = tmp_path / "out.file"
    WRITERS[writer](str(path))
    assert path.stat().st_mode & 0o777 == mode
    assert os.listdir(tmp_path) == ["out.file"]  # no temporary file left
    assert os.umask(mask) == mask  # the writer left the umask alone


def test_config_yaml_is_world_readable_under_umask_022(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "run" / "config.yaml"
    save_config(load_config(), path)
    assert path.stat().st_mode & 0o777 == 0o644
    assert "model:" in path.read_text(encoding="utf-8")


def test_writers_replace_the_content_and_create_the_folder(tmp_path):
    path = tmp_path / "new" / "folder" / "x.json"
    atomic_write_json(path, {"old": True})
    atomic_write_json(path, {"é": [1, 2]}, indent=None)
    assert path.read_text(encoding="utf-8") == '{"\\u00e9": [1, 2]}'
    atomic_write_text(path, "naïve\n")
    assert path.read_bytes() == "naïve\n".encode()
    atomic_write_bytes(path, b"\xff")
    assert path.read_bytes() == b"\xff"


def test_temporary_file_is_beside_the_target_and_target_untouched_until_the_end(tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(b"old")
    with atomic_path(path, suffix=".keras") as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and tmp.endswith(".keras")
        assert os.path.basename(tmp).startswith(".model.keras.")
        assert os.path.getsize(tmp) == 0
        with open(tmp, "wb") as f:
            f.write(b"new")
        assert path.read_bytes() == b"old"
    assert path.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["model.keras"]


def test_an_error_in_the_block_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "best.json"
    path.write_text('{"ap": 0.5}')
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_path(path) as tmp, open(tmp, "w") as f:
            f.write('{"ap": 0.')
            raise RuntimeError("disk on fire")
    assert json.loads(path.read_text()) == {"ap": 0.5}
    assert os.listdir(tmp_path) == ["best.json"]


def test_a_failing_save_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "best.keras"
    path.write_bytes(b"old model")

    def save(tmp: str) -> None:
        _save_with_open(tmp)
        raise OSError("no space left")

    with pytest.raises(OSError, match="no space"):
        atomic_save(path, save, suffix=".keras")
    assert path.read_bytes() == b"old model"
    assert os.listdir(tmp_path) == ["best.keras"]


def test_a_save_that_replaces_the_temporary_file_still_commits(tmp_path):
    """Libraries may delete and recreate the file they are given (the path, not a handle)."""

    def save(tmp: str) -> None:
        os.remove(tmp)
        _save_with_open(tmp)

    atomic_save(tmp_path / "x.bin", save)
    assert (tmp_path / "x.bin").read_bytes() == b"saved"
    assert os.listdir(tmp_path) == ["x.bin"]
