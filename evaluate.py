"""COCO-evaluate a checkpoint or an existing results file; see ``python evaluate.py -h``."""

import sys

if __name__ == "__main__":
    try:  # importing TensorFlow takes seconds: Ctrl-C may land here
        from detector.__main__ import take_verbose
        from detector.cli.train import evaluate_main
        from detector.engine.faults import exit_after
    except KeyboardInterrupt:
        print("\ninterrupted while starting: nothing was done", file=sys.stderr)
        sys.exit(130)
    exit_after(lambda: evaluate_main(take_verbose(sys.argv[1:])))
