"""``python -m detector.data``: the dataset tools of `detector.data.cli`."""

import sys

if __name__ == "__main__":
    from detector.data.cli import main

    sys.exit(main())
