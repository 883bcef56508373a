"""``python -m detector.data``: the dataset tools of `detector.data.cli`."""

import sys

if __name__ == "__main__":
    from detector.cli import quiet_update_checks

    quiet_update_checks()  # before albumentations is imported
    from detector.data.cli import main

    sys.exit(main())
