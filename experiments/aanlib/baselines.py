"""Translation-free baselines: the MR used as CT, histogram matching and constants in the head."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthct.errors import SynthctError
from synthct.eval.metrics import head_mask_8bit

from experiments.aanlib.common import ScoredSlice, load_scored_set, protocol, read_8bit, score

CONSTANT_GREY = 110.0  # the constant baseline inside the head of the published comparison


def training_ct_head_pixels(work: Path) -> np.ndarray:
    """In-head pixels of all training CTs, pooled. The head of a CT is found on the CT itself
    (the head-holder arc is a separate, smaller component), never through its MR: the baselines
    respect the unpaired protocol too."""
    values = []
    for path in sorted((Path(work) / "train_ct").glob("*.png")):
        ct = read_8bit(path)
        values.append(ct[head_mask_8bit(ct)])
    if not values:
        raise SynthctError("no training CT slices; run prepare", Path(work) / "train_ct")
    return np.concatenate(values)


def best_constant(scored: list[ScoredSlice]) -> int:
    """The grey level (0..255) inside the head that minimises the mean over slices of the in-head
    MAE. An oracle: it looks at the scored CTs; for reference only."""
    levels = np.arange(256, dtype=np.float64)
    mean_mae = np.zeros(256)
    for item in scored:
        counts = np.bincount(np.clip(np.rint(item.ct[item.head]), 0, 255).astype(np.int64), minlength=256)
        mean_mae += np.abs(levels[:, None] - levels[None, :]) @ counts / counts.sum()
    return int(np.argmin(mean_mae))


def constant_in_head(scored: list[ScoredSlice], grey: float) -> dict[str, np.ndarray]:
    """``grey`` inside the head mask, 0 (air) outside."""
    return {item.id: np.where(item.head, grey, 0.0) for item in scored}


def histogram_matched(scored: list[ScoredSlice], ct_head_pixels: np.ndarray,
                      inverted: bool = False) -> dict[str, np.ndarray]:
    """Each MR slice's in-head pixels mapped monotonically onto the pooled in-head histogram of the
    training CTs (skimage ``match_histograms``); 0 outside. Restricting both sides to the head keeps
    the background, most of a slice, from dominating either histogram. ``inverted``: the MR's grey
    levels are reversed first (255 - MR): T2-bright fluid comes out dark, dark bone bright."""
    from skimage.exposure import match_histograms

    predictions = {}
    for item in scored:
        pred = np.zeros_like(item.mr)
        inside = item.mr[item.head]
        pred[item.head] = match_histograms(255 - inside if inverted else inside, ct_head_pixels)
        predictions[item.id] = pred
    return predictions


def baselines(work: Path) -> dict:
    """Scores of the translation-free baselines on the prepared fold's scored slices."""
    scored = load_scored_set(work)
    ct_pixels = training_ct_head_pixels(work)
    train_median = float(np.median(ct_pixels))
    oracle = best_constant(scored)
    runs = [
        ("mr_as_ct", "the MR itself used as the synthetic CT", {t.id: t.mr for t in scored}),
        ("histogram_matched", "MR, in-head histogram matched to the pooled in-head histogram of the training "
                              "CTs (per slice; 0 outside the head)", histogram_matched(scored, ct_pixels)),
        ("inverted_histogram_matched", "MR with its grey levels reversed (255 - MR), then in-head histogram "
                                       "matched like histogram_matched", histogram_matched(scored, ct_pixels, True)),
        ("constant_110", f"constant {CONSTANT_GREY:g} inside the head, 0 outside",
         constant_in_head(scored, CONSTANT_GREY)),
        ("constant_train_median", f"median in-head grey of the training CTs ({train_median:g}) inside the head, "
                                  "0 outside", constant_in_head(scored, train_median)),
        ("constant_best_oracle", f"best constant inside the head ({oracle}, chosen on the scored CTs: an oracle), "
                                 "0 outside", constant_in_head(scored, oracle)),
    ]
    return {"protocol": protocol(work, scored), "train_ct_head_median": train_median, "best_constant": oracle,
            "baselines": {name: score(preds, scored, name, text) for name, text, preds in runs}}
