#!/usr/bin/env python
"""Write ADE20K-150 semantic labels for detectron2 (label - 1, unlabeled -> 255).

Reads $DETECTRON2_DATASETS/ADEChallengeData2016/annotations/{training,validation}/, writes
annotations_detectron2/{training,validation}/ (used by ade20k_sem_seg_* and
ade20k_panoptic_*).
"""

import argparse
import os

from mask2former.data.preparation.ade20k import convert_ade20k_sem_seg
from mask2former.data.preparation.cli import exit_on_missing_inputs


@exit_on_missing_inputs
def main() -> None:
    default = os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "ADEChallengeData2016")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ade-root", default=default, help=f"ADEChallengeData2016 ({default})")
    args = parser.parse_args()
    print(f"converted: {convert_ade20k_sem_seg(args.ade_root)}")


if __name__ == "__main__":
    main()
