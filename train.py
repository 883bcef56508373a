"""Train a YOLOv2 detector: ``python train.py [--config FILE] [--set key=value ...]``."""

import sys

if __name__ == "__main__":
    try:  # importing TensorFlow takes seconds: Ctrl-C may land here
        from detector.__main__ import take_verbose
        from detector.cli.train import train_main
        from detector.engine.faults import exit_after
    except KeyboardInterrupt:
        print("\ninterrupted while starting: nothing was done", file=sys.stderr)
        sys.exit(130)
    exit_after(lambda: train_main(take_verbose(sys.argv[1:])))
