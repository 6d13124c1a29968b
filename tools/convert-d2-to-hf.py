#!/usr/bin/env python
"""Convert a Mask2Former trained here (Swin backbone) into a Hugging Face transformers folder.

Usage:
    python tools/convert-d2-to-hf.py --config-file CONFIG --weights output/model_final.pth DST
    # then, with transformers:
    #   Mask2FormerForUniversalSegmentation.from_pretrained(DST)
    #   Mask2FormerImageProcessor.from_pretrained(DST)

DST receives config.json (class names from the config's DATASETS.TEST[0] metadata, test-time
thresholds, stuff classes as label_ids_to_fuse), model.safetensors and
preprocessor_config.json; it is loaded back with transformers as a check. Trailing KEY VALUE
pairs override the config. See mask2former/interop/huggingface.py.
"""

import argparse
import sys

from mask2former.interop.huggingface import convert_d2_checkpoint_to_hf


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config YAML file")
    parser.add_argument(
        "--weights", help="checkpoint (.pth or .pkl) to convert (default: MODEL.WEIGHTS)"
    )
    parser.add_argument("dst", help="output folder")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    opts = list(args.opts)
    if args.weights:
        opts += ["MODEL.WEIGHTS", args.weights]
    try:
        folder = convert_d2_checkpoint_to_hf(args.config_file, args.dst, opts)
    except (FileNotFoundError, ImportError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
