#!/usr/bin/env python
"""Convert model weights between .pkl (Detectron2), .pth / .pt (PyTorch) and .safetensors.

Usage:
    python tools/convert-weights.py model_final_f07440.pkl model_final.safetensors
    python tools/convert-weights.py output/model_final.pth model_final.safetensors

The formats follow the files' extensions. Names, values, "__author__" and
"matching_heuristics" are kept; a training checkpoint's optimizer, scheduler and iteration
are left out. Of a checkpoint trained with MODEL_EMA, the moving average of the weights is
written (what inference uses; --raw-weights writes the raw ones). The input is read without
running code from it: a pickle that asks to call anything but the numpy functions that
rebuild arrays is refused (exit status 1).
Safetensors is the format to share weights in.
"""

import argparse
import sys
import warnings

# detectron2 uses torch.jit.script, deprecated in this torch: nothing a user can act on.
warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)

from mask2former.utils.weights_io import convert_weights_file  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="weights to read (.pkl, .pth, .pt or .safetensors)")
    parser.add_argument("output", help="weights to write (.pkl, .pth, .pt or .safetensors)")
    parser.add_argument(
        "--raw-weights",
        action="store_true",
        help="of a checkpoint trained with MODEL_EMA: its raw weights, not the moving average",
    )
    args = parser.parse_args(argv)
    try:
        count, left_out = convert_weights_file(
            args.input, args.output, average=not args.raw_weights
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {count} tensors to {args.output}")
    if left_out:
        print(f"left out (not model weights): {', '.join(left_out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
