#!/usr/bin/env python
"""Generate the synthetic "shapes" data set into $DETECTRON2_DATASETS/shapes.

Same as ``python -m mask2former.data.synthetic``; see ``--help`` for the options.
"""

from mask2former.data.synthetic import main

if __name__ == "__main__":
    main()
