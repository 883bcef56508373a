"""Detect objects in images, folders, videos or a webcam; see ``python predict.py -h``."""

import sys

from detector.__main__ import take_verbose
from detector.cli.predict import predict_main

if __name__ == "__main__":
    sys.exit(predict_main(take_verbose(sys.argv[1:])))
