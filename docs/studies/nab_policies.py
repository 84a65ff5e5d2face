# docs/quality.md, session 39: NAB's alerts re-decided offline from a run's saved engine
# output (OUT/_engine/**.npz: each row's z-score and its model's threshold) under other
# alert policies, thresholds, rankings and new-territory margins; scored as NAB scores.
# `cooldown(150)` reproduces the run's own alerts exactly (new territory's rows told apart
# by their clamped score); other policies ignore what protecting the state would change.
# Usage: PYTHONPATH=. .venv/bin/python docs/studies/nab_policies.py OUT NAB SHOW_TEST SPEC..
#   SPEC: 'cooldown(100)', 'escalate(2)', 'resolve(50,150)' (an incident closed by 50 calm
#   readings, 150 between opens), 'T:np.minimum(T,8)' (thresholds), 'R:0.5+0.01*z'
#   (ranking), 'NR:0.05/150' (new territory's margin / cooldown, kept for the SPECs after
#   it); NRM=0.05 sets the margin
#   for every SPEC (default: the run's own, from OUT/report.json). SHOW_TEST 0 prints the
#   dev half only.
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from detector.core.scoring import likelihood_of
from training.nab.evaluate import _halves
from training.nab.likelihood import _out_of_range
from training.nab.normalisation import corpus_report
from training.nab.windows import FileScores, load_nab_series, load_windows

run = Path(sys.argv[1]); nab = Path(sys.argv[2]); SHOW_TEST = bool(int(sys.argv[3]))
wins = load_windows(nab / "labels" / "combined_windows.json")
ran = json.loads((run / "report.json").read_text())["config"]["scoring"]["new_range"]
def spaced(hits, cd):
    """The hits (sorted rows) more than ``cd`` rows after the last one kept."""
    out, last = [], -10**9
    for t in hits:
        if t - last > cd:
            out.append(t); last = t
    return out


def newrange(v, prob, margin, cd):
    out = np.zeros(len(v), bool)
    out[spaced(np.flatnonzero(_out_of_range(v, prob, margin)), cd)] = True
    return out


def cooldown(cd=150):
    def f(over, z):
        out = np.zeros(len(z), bool)
        out[spaced(np.flatnonzero(over), cd)] = True
        return out
    return f


def escalate(k, cd=150):
    def f(over, z):
        out = np.zeros(len(z), bool); last = -10**9; zo = np.inf
        for i in np.flatnonzero(over):
            if i - last > cd or z[i] >= k * zo: out[i] = True; last = i; zo = z[i]
        return out
    return f


def resolve(R, cd=0):
    """An alert opens an incident; it closes after R readings in a row not over; a new one
    needs it closed and cd rows since the last open."""
    def f(over, z):
        out = np.zeros(len(z), bool); open_ = False; calm = 0; last = -10**9
        for i in range(len(z)):
            if over[i]:
                calm = 0
                if not open_ and i - last > cd:
                    out[i] = True; open_ = True; last = i
            elif open_:
                calm += 1
                if calm >= R: open_ = False
        return out
    return f


data = {}
for rel, ts, v in load_nab_series(nab / "data"):
    e = np.load((run / "_engine" / rel).with_suffix(".npz"))
    prob = int(e["probation"])
    data[rel] = dict(ts=ts, v=v, z=e["score"].astype(np.float64), T=e["threshold"].astype(np.float64),
                     prob=prob, an=e["anomalous"], lik=e["likelihood"].astype(np.float64),
                     ran=newrange(v, prob, ran["margin"], ran["cooldown"]) if ran else np.zeros(len(v), bool))

NR = dict(margin=float(os.environ.get("NRM", ran["margin"] if ran else 0.1)), cd=150)


def evaluate(policy, label, tt=lambda T: T, rank=None):
    fs = []
    for rel, d in data.items():
        z, T, prob, an = d["z"], d["T"], d["prob"], d["an"]
        nr = newrange(d["v"], prob, NR["margin"], NR["cd"])
        sc = np.zeros(len(z))
        if policy == "base":
            sc[an] = d["lik"][an]
        else:
            # The run's new-territory alerts clamped z up to the threshold: not the error's.
            clamped = d["ran"] & (z <= T + 1e-4)
            over = (z >= tt(T) - 1e-6) & ~clamped; over[:10] = False
            rule = an & ~over & ~d["ran"]  # alerts of other rules (flatline): kept as they were
            al = policy(over, z)
            sc[al] = likelihood_of(torch.tensor(z[al])).double().numpy() if rank is None else np.clip(rank(z[al], T[al]), 0, 0.9999)
            sc[rule] = d["lik"][rule]
            sc[nr] = 1.0
        sc[:prob] = 0
        fs.append(FileScores(rel, d["ts"], np.clip(sc, 0, 1), wins[rel]))
    full = corpus_report(fs)["profiles"]["standard"]
    h = _halves(fs)
    tail = f" full {full['normalised']:6.2f} det {full['windows_detected']} fp {full['fp_rows']} test {h['test']['standard']:6.2f}" if SHOW_TEST else ""
    print(f"{label:32s} dev {h['dev']['standard']:6.2f}{tail}", flush=True)


evaluate("base", "base (saved alerts)")
for spec in sys.argv[4:]:
    if spec.startswith("NR:"):
        m, c = spec[3:].split("/"); NR["margin"] = float(m); NR["cd"] = int(c)
        evaluate(cooldown(150), spec)
    elif spec.startswith("R:"):
        evaluate(cooldown(150), spec, rank=eval("lambda z, T: " + spec[2:]))
    elif spec.startswith("T:"):
        evaluate(cooldown(150), spec, eval("lambda T: " + spec[2:]))
    else:
        evaluate(eval(spec), spec)
