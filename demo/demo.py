"""Mask2Former demo on images, a video or a webcam; ``python demo/demo.py --help``.

The logic lives in :mod:`mask2former.apps.cli`; this script reports and sets the exit status
(0: everything written; 1: a problem, each one named with what to do).
"""

import logging
import sys
import warnings

# detectron2 uses torch.jit.script, deprecated in this torch: nothing a user can act on.
warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)

from mask2former.apps.cli import DemoError, build_argument_parser, run_demo  # noqa: E402


def main(argv=None) -> int:
    args = build_argument_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = run_demo(args, tune_cpu_allocator=True)  # a script may change the process
    except DemoError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if report.written:
        folders = sorted(
            {path.rsplit("/", 1)[0] if "/" in path else "." for path in report.written}
        )
        print(f"Wrote {len(report.written)} file(s) to {', '.join(folders)}")
    if report.failures:
        print(f"{len(report.failures)} input(s) failed:", file=sys.stderr)
        for name, reason in report.failures:
            print(
                f"  {reason}" if reason.startswith(name) else f"  {name}: {reason}", file=sys.stderr
            )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
