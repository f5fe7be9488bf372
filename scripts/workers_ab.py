"""A/B timing of seed sweeps in one process (workers=1) against worker processes (workers=3), interleaved so
that a change in the machine's speed hits both alike (on shared 2-core VMs it varies by tens of percent over
a day). Usage: ``FP_PROGRESS=0 python scripts/workers_ab.py [repeats]`` (3 seeds, 6,000 clean + 1,500 FGM
steps at the full profile's size; about 4 minutes per repeat on 2 cores)."""

import sys
import time

from fp_helpers import experiments

if __name__ == "__main__":  # workers are spawned: this guard keeps them from running this script again
    cfg = experiments.synthetic_config("full", {"clean_steps": 6000, "adv_steps": 1500})
    for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 2):
        for w in (1, 3):
            t = time.perf_counter()
            experiments.seed_curves(cfg, [0, 1, 2], device="cpu", checkpoint_dir=False, workers=w)
            print(f"workers={w}: {time.perf_counter() - t:.1f} s", flush=True)
