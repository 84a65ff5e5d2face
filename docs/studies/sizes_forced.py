# docs/quality.md, session 35: what reading every stream at the fleet's size costs where
# the streams' sizes do not spread (the gate, training.sizes.SPREAD = 3, keeps it off on the
# six styles: their largest 90th-over-10th ratio is 2.7, mixed). The gate lowered to 1 so
# every judged channel is sized; otherwise as fleet_seeds.py (dev seeds only).
# Usage: PYTHONPATH=. .venv/bin/python docs/studies/sizes_forced.py OUT STREAMS SEED[,SEED..] [STYLE..]
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
import training.sizes
from fleet_seeds import pooled_table  # docs/studies/
from training.fleet.styles import STYLES

if __name__ == "__main__":  # --jobs auto spawns workers, which import this file
    training.sizes.SPREAD = 1.0  # the gate opens for every channel that changes
    out, streams = Path(sys.argv[1]), int(sys.argv[2])
    seeds = [int(s) for s in sys.argv[3].split(",")]
    styles = sys.argv[4:] or list(STYLES)
    print(pooled_table(out, streams, seeds, styles), flush=True)
