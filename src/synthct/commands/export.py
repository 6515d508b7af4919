"""synthct export: a trained generator as ONNX or TorchScript, parity-checked against PyTorch."""

from __future__ import annotations

HELP = "export a trained generator to ONNX or TorchScript (with its JSON sidecar and a parity check)"


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="run folder, generator .safetensors or its .json sidecar")
    parser.add_argument("--direction", required=True, choices=("mr2ct", "ct2mr"))
    parser.add_argument("--format", default="onnx", choices=("onnx", "torchscript"))
    parser.add_argument("--out", required=True, help="output file (the sidecar is written to FILE.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")


def run(args) -> int:
    from synthct.translate.export import export_generator

    info = export_generator(args.model, args.direction, args.format, args.out, overwrite=args.overwrite)
    print(f"wrote {args.out} and {args.out}.json ({args.format}; max abs difference to PyTorch "
          f"{info['parity_max_abs_diff']:.1e})")
    return 0
