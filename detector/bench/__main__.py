"""``python -m detector.bench [scale ... | growth ...]``: the benchmarks (see
`detector.bench.core`, `detector.bench.scale`, `detector.bench.growth`)."""

import sys


def main(argv: list[str] | None = None) -> int:
    """Runs ``scale mirrored|startup`` or ``growth`` when asked for, else the default
    benchmark."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["scale"]:
        from detector.bench.scale import main as scale_main

        return scale_main(argv[1:])
    if argv[:1] == ["growth"]:
        from detector.bench.growth import main as growth_main

        return growth_main(argv[1:])
    from detector.bench.core import main as bench_main

    return bench_main(argv)


if __name__ == "__main__":
    sys.exit(main())
