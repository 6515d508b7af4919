"""What a RegGAN run's registration network does on its own training pairs: the size of the
displacement field it predicts between the translation and the real CT, and the L1 that the
generator is trained on (to the warped CT) beside the L1 to the CT itself. On pairs that are
already registered a large field means the registration absorbs the generator's errors; moving
the translation back by the field (its average vector alone, or the whole field) shows how much of
the translation's distance to the CT is displacement. For pix2pix and the regression, which have
no registration, the L1 to the CT alone, for comparison.

Training data only: the pairs the run learnt from, never the scored split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthct.errors import SynthctError

GREY_PER_UNIT = 127.5  # 8-bit slices: [-1, 1] spans 255 grey levels


def head_of(mr: np.ndarray, ct: np.ndarray) -> np.ndarray:
    """Pixels above air in the MR or the CT ([-1, 1] units)."""
    return (mr > -0.9) | (ct > -0.9)


def field_statistics(model, pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[dict]:
    """Per pair (MR, CT as (H, W) arrays in [-1, 1]): the head's L1 in grey levels of G(mr) to the
    CT and, for a model with a registration network, to the warped CT; the field's mean and
    95th-percentile length, its average vector (x, y) and the mean length of what is left of it
    beyond that vector, in pixels inside the head; and the L1 to the CT of G(mr) moved back by the
    average vector and by the whole field (to first order, the warp by -phi)."""
    import torch

    from synthct.models.registration import warp

    rows = []
    with torch.no_grad():
        for mr, ct in pairs:
            mr_t, ct_t = (torch.from_numpy(np.asarray(a, np.float32))[None, None] for a in (mr, ct))
            fake = model.G(mr_t)
            head = torch.from_numpy(head_of(mr, ct))
            row = {"l1_to_ct": float((fake - ct_t).abs()[0, 0][head].mean()) * GREY_PER_UNIT}
            if getattr(model, "registration", None) is not None:
                _, phi, warped = model.registration(fake, ct_t)
                phi = phi.float()
                length = phi[0].pow(2).sum(0).sqrt()[head]
                shift = phi[0][:, head].mean(1)  # a global shift, which no smoothness term sees
                rest = (phi[0][:, head] - shift[:, None]).pow(2).sum(0).sqrt()
                # R moved the CT's content by -phi onto the translation: moving the translation by
                # +phi (sampling it at p - phi) brings it back onto the CT
                by_shift = warp(fake, -shift[None, :, None, None].expand_as(phi).contiguous())
                by_field = warp(fake, -phi)
                row |= {"l1_to_warped_ct": float((fake - warped).abs()[0, 0][head].mean()) * GREY_PER_UNIT,
                        "field_mean_px": float(length.mean()), "field_p95_px": float(length.quantile(0.95)),
                        "shift_x_px": float(shift[0]), "shift_y_px": float(shift[1]),
                        "field_beyond_shift_px": float(rest.mean()),
                        "l1_shifted_back": float((by_shift - ct_t).abs()[0, 0][head].mean()) * GREY_PER_UNIT,
                        "l1_warped_back": float((by_field - ct_t).abs()[0, 0][head].mean()) * GREY_PER_UNIT}
            rows.append(row)
    return rows


def run_fields(run: Path, work: Path, every: int = 1) -> list[dict]:
    """``field_statistics`` of the paired run in ``run`` (its last checkpoint) on every
    ``every``-th training pair of the prepared fold."""
    from PIL import Image

    from synthct.engine import load_run_config
    from synthct.engine.checkpoint import load_state
    from synthct.models import build_model

    run = Path(run)
    if every < 1:
        raise SynthctError(f"--every must be at least 1, got {every}")
    if not (run / "config.yaml").is_file():
        raise SynthctError("not a run folder (no config.yaml)", run)
    cfg = load_run_config(run / "config.yaml")
    if cfg.model.name not in ("reggan", "pix2pix", "regression"):
        raise SynthctError(f"a paired run (reggan, pix2pix, regression) is needed, this one trained {cfg.model.name}",
                           run)
    model = build_model(cfg.model, cfg.data.slices, cfg.data.slices)
    state, _ = load_state(run / "checkpoints")
    model.load_state_dict(state["model"])
    model.eval()

    def grey(path: Path) -> np.ndarray:
        return np.asarray(Image.open(path).convert("L"), np.float32) / GREY_PER_UNIT - 1.0

    mr_dir, ct_dir = Path(work) / "train_pairs" / "mr", Path(work) / "train_pairs" / "ct"
    names = sorted(p.name for p in mr_dir.glob("*.png"))[::every]
    if not names:
        raise SynthctError("no training pairs; run prepare first", mr_dir)
    return field_statistics(model, [(grey(mr_dir / n), grey(ct_dir / n)) for n in names])
