"""Why the demo's generator, told the answer, learns the phantoms so slowly: single changes of the
generator or its target, each trained with L1 on the true pairs of the demo's six training cases
(the pairs folder that ``experiments.demo_floor`` writes) and scored on those same cases, so that
only fitting speed is measured, not generalisation.

A plain loop: one random training slice per step (fixed seed), Adam (beta1 0.5), no lr decay, fp32,
one thread. Scored on every third training slice: MAE inside the body in HU, and the mean error on
cortical bone (>= 1000 HU), which is where the generator falls short.

    python -m experiments.demo_floor --steps 400 --out runs/demo_floor      # writes runs/demo_floor/pairs
    python -m experiments.demo_probes runs/demo_floor/pairs --probe base --probe window=-1024,1500 \\
        --probe no_norm --probe full_res_skip --probe mse --probe lr=1e-3 [--steps 400]

Probes: base; window=LO,HI (the CT window mapped to [-1, 1]); no_norm (the instance norms removed,
activations kept); full_res_skip (the stem's features added to the decoder's before the output
head: a full-resolution path past the 4x downsampling); mse (squared error instead of L1);
lr=VALUE. Generator changes that ``experiments.demo_floor --probe`` also takes: stem_concat (the
stem's features concatenated to the decoder's before the head), stem_concat_refine (the same, then
a full-resolution 3 x 3 convolution, norm and ReLU), input_concat (the raw input concatenated before
the head), pointwise_branch (a norm-free branch of two 1 x 1 convolutions, 32 channels, from the
input, concatenated before the head), stem_no_norm (the stem without its instance norm).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import numpy as np
import torch
from torch.nn import functional as F

CORTICAL_HU = 1000.0
GENERATOR_PROBES = ("full_res_skip", "stem_concat", "stem_concat_refine", "input_concat", "pointwise_branch",
                    "stem_no_norm")


@contextlib.contextmanager
def _probe_patches(probe: str):
    """Monkeypatches of the shipped layers for the probes that change the network."""
    import synthct.models.generators as generators
    import synthct.models.layers as layers
    from torch import nn

    G = generators.ResnetGenerator
    saved = layers.InstanceNorm.forward, G.__init__, G.forward
    shipped_init = G.__init__
    if probe == "no_norm":
        def without_norm(self, x):
            return x if self.negative_slope is None else layers._leaky_relu_(x.clone(), self.negative_slope)
        layers.InstanceNorm.forward = without_norm
    elif probe == "full_res_skip":
        def with_skip(self, x):
            stem = self.stem(x)
            return self.head(self.up(self.blocks(self.down(stem))) + stem)
        G.forward = with_skip
    elif probe in GENERATOR_PROBES:
        def changed_init(self, in_channels, out_channels, ngf=64, n_blocks=9):
            shipped_init(self, in_channels, out_channels, ngf, n_blocks)
            if probe == "stem_no_norm":
                self.stem = layers.ConvNormAct(in_channels, ngf, 7, padding=3, reflect=True, norm=False)
                return
            if probe == "stem_concat_refine":
                self.refine = layers.ConvNormAct(2 * ngf, ngf, 3, padding=1, reflect=True)
                return
            beside = {"stem_concat": ngf, "input_concat": in_channels, "pointwise_branch": 32}[probe]
            self.head = layers.OutputHead(ngf + beside, out_channels)
            if probe == "pointwise_branch":
                self.pointwise = nn.Sequential(nn.Conv2d(in_channels, 32, 1), nn.ReLU(), nn.Conv2d(32, 32, 1), nn.ReLU())

        def changed_forward(self, x):
            stem = self.stem(x)
            decoded = self.up(self.blocks(self.down(stem)))
            if probe == "stem_no_norm":
                return self.head(decoded)
            beside = x if probe == "input_concat" else self.pointwise(x) if probe == "pointwise_branch" else stem
            joined = torch.cat([decoded, beside], dim=1)
            return self.head(self.refine(joined) if probe == "stem_concat_refine" else joined)
        G.__init__, G.forward = changed_init, changed_forward
    try:
        yield
    finally:
        layers.InstanceNorm.forward, G.__init__, G.forward = saved


def run_probe(pairs: str, probe: str, steps: int, seed: int = 0) -> dict:
    from synthct.config import RunConfig, apply_overrides
    from synthct.data.layouts import collect_sources
    from synthct.data.slices import SliceDataset
    from synthct.demo import DemoSettings
    from synthct.models.common import init_weights
    from synthct.models.generators import ResnetGenerator

    s = DemoSettings()
    name, _, value = probe.partition("=")
    window = tuple(float(v) for v in value.split(",")) if name == "window" else (-1024.0, 3000.0)
    lr = float(value) if name == "lr" else 2e-4
    loss_of = F.mse_loss if name == "mse" else F.l1_loss
    lo, hi = window
    half = (hi - lo) / 2
    cfg = apply_overrides(RunConfig(), [f"data.root={pairs}", "data.paired=true", f"data.size={s.size}",
                                        f"data.slices={s.slices}", f"data.ct_window=[{lo},{hi}]"])
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    data = SliceDataset(collect_sources(cfg.data), cfg.data, paired=True, seed=seed)
    with _probe_patches(name):
        G = ResnetGenerator(s.slices, 1, s.ngf, s.blocks)
        init_weights(G, 0.02)
        opt = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.5, 0.999))
        rng = np.random.default_rng(seed)
        centre = s.slices // 2
        started = time.perf_counter()
        for _ in range(steps):
            item = data[int(rng.integers(len(data)))]
            loss = loss_of(G(item["mr"][None]), item["ct"][None, centre:centre + 1])
            opt.zero_grad()
            loss.backward()
            opt.step()
        minutes = (time.perf_counter() - started) / 60
        G.eval()
        errors, bone = [], []
        with torch.no_grad():
            for i in range(0, len(data), 3):
                item = data[i]
                y, ct = G(item["mr"][None])[0, 0], item["ct"][centre]
                errors.append(((y - ct).abs() * half)[ct > -0.95])
                bone.append(((y - ct) * half)[ct > (CORTICAL_HU - lo) / half - 1])
    return {"probe": probe, "steps": steps, "mae": float(torch.cat(errors).mean()),
            "bone_error": float(torch.cat(bone).mean()), "minutes": minutes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.demo_probes", description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", help="the demo's true training pairs (demo_floor's OUT/pairs)")
    parser.add_argument("--probe", action="append", default=[], help="base | window=LO,HI | no_norm | "
                        f"mse | lr=VALUE | {' | '.join(GENERATOR_PROBES)} (repeatable)")
    parser.add_argument("--steps", type=int, nargs="*", default=[400])
    args = parser.parse_args(argv)
    known = ("base", "window", "no_norm", "mse", "lr") + GENERATOR_PROBES
    unknown = [p for p in args.probe if p.partition("=")[0] not in known]
    if unknown or not args.probe:
        print(f"experiments.demo_probes: error: probes must be among {', '.join(known)}; got {unknown or 'none'}",
              file=sys.stderr)
        return 2
    print("| probe | steps | MAE on its training cases (HU) | mean error on cortical bone (HU) | minutes |")
    print("|---|---|---|---|---|")
    for steps in args.steps:
        for probe in args.probe:
            r = run_probe(args.pairs, probe, steps)
            print(f"| {r['probe']} | {r['steps']} | {r['mae']:.1f} | {r['bone_error']:+.0f} | {r['minutes']:.1f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
