#!/usr/bin/env python
"""Check the images and annotation files of registered data sets before training.

Same as ``python -m mask2former.data.check``; see ``--help`` and datasets/README.md. Exits with
status 1 when it finds problems; ``--write-exclude FILE`` writes the images with problems for
``DATASETS.EXCLUDE_FILE``.
"""

import sys

from mask2former.data.check import main

if __name__ == "__main__":
    sys.exit(main())
