"""Train a YOLOv2 detector: ``python train.py [--config FILE] [--set key=value ...]``."""

import sys

from detector.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
