# What the offline studies of docs/quality.md share: a fleet model's errors with every rule off.
"""``setup(argv)``: the model, its fleet and a function that replays series with every rule
off (nothing protected, no threshold), from ``collect_from`` (default: the warm-up)."""
import dataclasses
import math
import sys
from pathlib import Path

from detector.artifacts import load_current
from training.calibrate import run_engine
from training.fleet.styles import generate


def setup(argv=None):
    """(style, seed, bundle, fleet, run) from ``STYLE SEED MODEL_DIR`` on the command line."""
    style, seed, mdir = (argv or sys.argv)[1:4]
    b = load_current(Path(mdir))
    fleet = generate(style, int(seed), streams=12)
    never = dataclasses.replace(b.scoring, threshold=math.inf, protect_state=False, peak=None,
                                sustained=None, flatline=None, new_range=None, incidents=None)

    def run(series, start=None):
        start = b.scoring.warmup if start is None else start
        return run_engine(b.module, b.scaler, b.features, series, never,
                          collect_from=[start] * len(series))

    return style, int(seed), b, fleet, run


def clamp_gain(lo, hi):
    """Patch the nowcast readout so its level gain (k * x_prev) reads x_prev held within
    [lo, hi] (scalars or (F,) tensors, scaler units): session 8's level-range study."""
    import torch
    from detector.core import model as mdl

    orig = mdl.ReconstructionLSTM.readout_parts

    def clamped(self, top, x_prev, x_now=None):
        out, moved = orig(self, top, x_prev, x_now)
        if self.cross is None:
            return out, moved
        k = self.cross(top)[..., : self.config.features]
        held = torch.maximum(torch.minimum(x_prev, torch.as_tensor(hi)), torch.as_tensor(lo))
        return out - k * (x_prev - held), moved

    mdl.ReconstructionLSTM.readout_parts = clamped
