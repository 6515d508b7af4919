"""synthct phantom: SYNTHETIC paired head phantoms to try the toolkit without patient data."""

from __future__ import annotations

HELP = "write synthetic paired MR/CT head phantoms (SynthRAD layout) for demos and tests"


def add_arguments(parser) -> None:
    parser.add_argument("--n", type=int, default=4, help="number of cases (default 4)")
    parser.add_argument("--out", required=True, help="output folder (DIR/phantom_000/{mr,ct,mask}.nii.gz)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first case; case i uses seed+i")
    parser.add_argument("--size", default="128,128,64", help="grid size X,Y,Z in voxels (default 128,128,64)")
    parser.add_argument("--contrast", choices=("t1", "t2"), default="t1", help="MR weighting (default t1)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing phantom files")


def _parse_size(text: str) -> tuple[int, int, int]:
    from synthct.errors import SynthctError

    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(p.isdigit() and int(p) >= 8 for p in parts):
        raise SynthctError(f"--size expects three integers >= 8 as X,Y,Z, got '{text}'")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def run(args) -> int:
    from synthct.data.phantom import write_phantoms

    size = _parse_size(args.size)
    cases = write_phantoms(args.n, args.out, seed=args.seed, size=size, overwrite=args.overwrite,
                           contrast=args.contrast)
    print(f"wrote {len(cases)} synthetic phantom case{'s' if len(cases) != 1 else ''} to {args.out}")
    return 0
