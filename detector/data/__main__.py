"""``python -m detector.data``: the dataset tools of `detector.cli.data`."""

import sys

if __name__ == "__main__":
    from detector.cli.data import main

    sys.exit(main())
