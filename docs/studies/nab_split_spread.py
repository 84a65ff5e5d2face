# docs/quality.md, session 30: how far apart two halves of NAB score by chance. Re-scores a
# finished run's results CSVs (no replay): the fixed split's halves (within each category,
# files in name order alternate dev / test), then N random splits by the same shape of
# rule (within each category, a random half of its files), each half normalised on its own.
# Usage: PYTHONPATH=. .venv/bin/python docs/studies/nab_split_spread.py RUN_DIR NAB_DIR [N]
import csv, sys
from pathlib import Path
import numpy as np
from training.nab.evaluate import _locate, split_of
from training.nab.normalisation import corpus_report
from training.nab.windows import FileScores, load_windows

run, nab = Path(sys.argv[1]), Path(sys.argv[2])
n = int(sys.argv[3]) if len(sys.argv) > 3 else 200
_, labels = _locate(nab, None)
windows = load_windows(labels)
files = []
for p in sorted(run.glob("*/*.csv")):
    rel = f"{p.parent.name}/{p.name}"
    with p.open() as f:
        rows = list(csv.DictReader(f))
    ts = np.array([r["timestamp"] for r in rows], dtype="datetime64[us]")
    files.append(FileScores(rel, ts, np.array([float(r["anomaly_score"]) for r in rows]), windows.get(rel, [])))


def score(part):
    return corpus_report(part)["profiles"]["standard"]["normalised"]


names = [f.relpath for f in files]
fixed = {h: score([f for f in files if split_of(f.relpath, names) == h]) for h in ("dev", "test")}
print(f"{len(files)} files, full {score(files):.2f}; fixed split dev {fixed['dev']:.2f} test {fixed['test']:.2f} gap {fixed['dev'] - fixed['test']:+.2f}")
rng = np.random.default_rng(0)
cats = sorted({f.relpath.split("/")[0] for f in files})
gaps = []
for _ in range(n):
    a, b = [], []
    for c in cats:
        same = [f for f in files if f.relpath.startswith(c + "/")]
        order = rng.permutation(len(same))
        half = (len(same) + 1) // 2 if rng.random() < 0.5 else len(same) // 2
        a += [same[i] for i in order[:half]]
        b += [same[i] for i in order[half:]]
    gaps.append(score(a) - score(b))
g = np.abs(np.array(gaps))
print(f"{n} random splits by category: |dev - test| median {np.median(g):.2f}, "
      f"90th percentile {np.quantile(g, 0.9):.2f}, max {g.max():.2f}; "
      f"share within 3 points {np.mean(g <= 3):.2f}; share at or beyond the fixed split's "
      f"{abs(fixed['dev'] - fixed['test']):.2f}: {np.mean(g >= abs(fixed['dev'] - fixed['test'])):.2f}")
