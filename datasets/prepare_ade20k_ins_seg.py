#!/usr/bin/env python
"""Write ADE20K instance annotations (COCO format, 100 thing classes) for ade20k_instance_*.

Reads $DETECTRON2_DATASETS/ADEChallengeData2016/{images,annotations_instance}/ and
categoryMapping.txt (from the ADE20K instance segmentation release), writes
ade20k_instance_{train,val}.json.
"""

import argparse
import os

from mask2former.data.preparation.ade20k import convert_ade20k_instance
from mask2former.data.preparation.cli import exit_on_missing_inputs


@exit_on_missing_inputs
def main() -> None:
    default = os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "ADEChallengeData2016")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ade-root", default=default, help=f"ADEChallengeData2016 ({default})")
    args = parser.parse_args()
    print(f"converted: {convert_ade20k_instance(args.ade_root)}")


if __name__ == "__main__":
    main()
