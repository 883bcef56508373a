"""``python -m detector.bench [scale ...]``: the benchmarks (see `detector.bench.core`)."""

import sys

from detector.bench.core import main as bench_main
from detector.bench.scale import main as scale_main


def main(argv: list[str] | None = None) -> int:
    """Runs ``scale mirrored|startup`` when asked for, else the default benchmark."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["scale"]:
        return scale_main(argv[1:])
    return bench_main(argv)


if __name__ == "__main__":
    sys.exit(main())
