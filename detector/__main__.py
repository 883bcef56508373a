"""The ``detector`` command (also ``python -m detector``): one word for each mode, then the
flags of the command line it stands for.

    detector train   [flags of python train.py]
    detector val     [flags of python evaluate.py]
    detector predict [flags of python predict.py]
    detector export  [flags of python -m detector.export]
    detector data    [flags of python -m detector.data]
    detector bench   [flags of python -m detector.bench]
    detector darknet [flags of python -m detector.darknet]

``--verbose`` anywhere also prints TensorFlow's native start-up lines, which are otherwise
held back (`detector.utils.native_log`).
"""

import sys

USAGE = __doc__.split("\n\n")[1]
MODES = ("train", "val", "predict", "export", "data", "bench", "darknet")


def _mode_main(mode: str):
    """The ``main(argv) -> int`` of a mode (imported on use: each pulls in its own part)."""
    if mode == "train":
        from detector.cli.train import train_main as main
    elif mode == "val":
        from detector.cli.train import evaluate_main as main
    elif mode == "predict":
        from detector.cli.predict import predict_main as main
    elif mode == "export":
        from detector.export.__main__ import main
    elif mode == "data":
        from detector.cli.data import main
    elif mode == "bench":
        from detector.bench.__main__ import main
    else:
        from detector.darknet.__main__ import main
    return main


def take_verbose(argv: list[str]) -> list[str]:
    """`argv` without ``--verbose``; when it was there, prints the held native lines."""
    if "--verbose" not in argv:
        return argv
    from detector.utils.native_log import held

    for line in held():
        print(line, file=sys.stderr)
    return [arg for arg in argv if arg != "--verbose"]


def main(argv: list[str] | None = None) -> int:
    """Dispatches ``detector MODE [flags]``; exit status 2 with the usage on a bad mode."""
    argv = take_verbose(list(sys.argv[1:] if argv is None else argv))
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage:\n{USAGE}")
        return 0 if argv else 2
    if argv[0] not in MODES:
        print(
            f"error: unknown mode {argv[0]!r}; expected one of {', '.join(MODES)}",
            file=sys.stderr,
        )
        return 2
    mode, rest = argv[0], argv[1:]
    return _mode_main(mode)(rest)


def console() -> None:
    """The console script: `main` under the training's exit handling (`exit_after`:
    Ctrl-C and a run's faults end the process cleanly, as ``python train.py`` does)."""
    from detector.engine.faults import exit_after

    exit_after(main)


if __name__ == "__main__":
    console()
