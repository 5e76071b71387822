"""`python -m studylib.evaluate --gt ANN.json --dt RESULTS.json [--type bbox|segm]`.

Prints one JSON object: the 12 COCO stats under the metrics.json keys (`bbox/AP` ... `bbox/ARl`,
values in [0, 1] as COCOeval.stats), through the same `evaluate_results` the training run uses.
`--tide` adds the TIDE errors at IoU 0.5 as `tide/cls` ... `tide/miss`, `tide/AP50` (AP points).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from .evaluation import BACKENDS, IOU_TYPES, evaluate_results, tide_errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m studylib.evaluate",
        description="COCO box or mask AP of a results file, printed as one JSON object.",
    )
    parser.add_argument("--gt", required=True, help="COCO instances annotation file")
    parser.add_argument("--dt", required=True, help="COCO results JSON file (a list of detections)")
    parser.add_argument("--type", default="bbox", choices=IOU_TYPES, help="IoU type (default: bbox)")
    parser.add_argument("--backend", default="pycocotools", choices=BACKENDS, help="COCOeval implementation")
    parser.add_argument("--tide", action="store_true", help="also report TIDE errors (ΔAP@0.5, AP points)")
    parser.add_argument("--verbose", action="store_true", help="print COCOeval's summary table to stderr")
    args = parser.parse_args(argv)
    try:
        # COCOeval's table goes to stderr so that stdout stays one JSON object
        with contextlib.redirect_stdout(sys.stderr):
            stats = evaluate_results(args.gt, args.dt, args.type, backend=args.backend, verbose=args.verbose)
        if args.tide:
            stats.update({f"tide/{k}": v for k, v in tide_errors(args.gt, args.dt, iou_type=args.type).items()})
    except ValueError as e:
        parser.exit(2, f"error: {e}\n")
    json.dump(stats, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
