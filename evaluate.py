"""COCO-evaluate a checkpoint or an existing results file; see ``python evaluate.py -h``."""

import sys

from detector.cli import evaluate_main

if __name__ == "__main__":
    sys.exit(evaluate_main())
