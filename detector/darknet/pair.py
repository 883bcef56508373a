"""A darknet cfg and the ``.weights`` file (or checkpoint) that goes with it: an error about
either names both, since a wrong pairing looks like a damaged file from either side (a
cfg's conv that the weights do not fit, a weights size the cfg does not expect)."""

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def naming_both(**files: str | None) -> Iterator[None]:
    """Re-raises a ValueError of the block with the files of the pair appended (``... (cfg
    /m/yolo.cfg, weights /m/yolo.weights)``), each given by keyword as what it is; a file
    whose full path the message holds already, None, or a cfg given as its text (a
    multi-line string, never quoted) is left out."""
    try:
        yield
    except ValueError as error:
        message = str(error)
        named = [
            f"{what} {path}"
            for what, path in files.items()
            if path and "\n" not in path and path not in message
        ]
        if not named:
            raise
        raise ValueError(f"{message} ({', '.join(named)})") from None
