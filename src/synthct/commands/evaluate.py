"""synthct evaluate: score synthetic CTs against reference CTs (SynthRAD2023 metrics)."""

from __future__ import annotations

import sys

HELP = "score predictions against references: MAE, ME, PSNR, SSIM (SynthRAD2023) or 8-bit metrics"


def add_arguments(parser) -> None:
    parser.add_argument("--pred", required=True, help="predictions: <case>/sct.* (or ct.*) folders or <case>.<ext> files")
    parser.add_argument("--ref", required=True, help="references: <case>/ct.* folders (SynthRAD layout) or <case>.<ext> files")
    parser.add_argument("--mask", help="masks: <case>/mask.* folders or <case>.<ext> files "
                        "(default: <case>/mask.* beside the reference, else computed from the reference)")
    parser.add_argument("--mode", choices=("hu", "8bit", "auto"), default="auto",
                        help="hu: SynthRAD2023 metrics in HU; 8bit: 8-bit picture metrics; auto: 8bit when "
                        "the references lie in [0, 255] (default)")
    parser.add_argument("--bone-hu", type=float, metavar="HU",
                        help="HU mode: voxels at or above this are bone for bone_dice / bone_invented / bone_missed "
                        "(default 250)")
    parser.add_argument("--bone-tolerance-mm", type=float, metavar="MM",
                        help="HU mode: bone farther than this from any bone of the other image counts as invented "
                        "or missed (default 2)")
    parser.add_argument("--out", required=True, help="folder for metrics.csv and summary.json")
    parser.add_argument("--overwrite", action="store_true", help="replace existing metrics.csv / summary.json")


def run(args) -> int:
    from synthct.eval.evaluate import BoneRule, check_outputs_free, evaluate_cases, format_table, write_outputs

    given = {"threshold_hu": args.bone_hu, "tolerance_mm": args.bone_tolerance_mm}
    bone = BoneRule(**{name: value for name, value in given.items() if value is not None})
    check_outputs_free(args.out, args.overwrite)
    result = evaluate_cases(args.pred, args.ref, args.mask, args.mode, bone=bone)
    written = write_outputs(result, args.out, overwrite=args.overwrite)
    print(format_table(result))
    print(f"wrote {written[0]} and {written[1]}")
    if not result.complete:
        print(f"synthct: error: {len(result.missing)} reference(s) have no prediction: {', '.join(result.missing)}",
              file=sys.stderr)
        return 1
    return 0
