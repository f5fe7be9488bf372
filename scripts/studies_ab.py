"""A/B timings of three changes of 2026-12-01, interleaved so that a change in the machine's speed hits both
variants alike. Usage: ``FP_PROGRESS=0 python scripts/studies_ab.py [lowrank|orders|grads]`` (default all).

- ``lowrank``: the adversarial chapter's low-rank study (``experiments.lowrank_study``) on one trained full
  run, in worker processes, in this process, in workers again; checks the numbers are identical. About
  4 minutes on 2 cores.
- ``orders``: the lower-bound chapter's linear stage from 5 and from 4 orders, twice each (4: what
  ``linear_stage_orders(..., run=res)`` trains, the first order being taken from the run). About 2 minutes.
- ``grads``: the lower-bound stages whose models PGD attacks through their ``grads`` (the linearised network,
  the NTK, the degree-3 kernel), fitted and evaluated in one thread with the closed-form gradients and with
  autograd (``AutogradModel.grads``, what they used before), interleaved twice; checks the numbers are
  identical. About 8 minutes.
"""

import json
import sys
import time

from fp_helpers import experiments, lower_bounds

if __name__ == "__main__":
    which = sys.argv[1:] or ["lowrank", "orders", "grads"]
    if "lowrank" in which:
        cfg = experiments.synthetic_config("full")
        run = experiments.run_synthetic(cfg, progress=False, checkpoint_dir=False, curves=False)
        numbers = []
        for workers in (None, 1, None):
            t = time.perf_counter()
            st = experiments.lowrank_study(run, workers=workers)
            print(f"lowrank_study, {'workers' if workers is None else 'one process'}: "
                  f"{time.perf_counter() - t:.1f} s", flush=True)
            numbers.append(json.dumps({"trained": st["trained"], "truncated": st["truncated"]}, sort_keys=True))
        print("numbers identical:", len(set(numbers)) == 1)
    if "grads" in which:
        from fp_helpers import baselines as bl
        from fp_helpers.runs import threads

        closed = bl.LinearisedNet.grads, bl.KernelModel.grads
        syn, lb = lower_bounds.lower_bounds_config("full")
        c = lower_bounds._context(syn, lb)
        init = experiments.init_net(c.s)
        numbers = []
        for variant in ("autograd", "closed form", "autograd", "closed form"):
            bl.LinearisedNet.grads, bl.KernelModel.grads = (
                (bl.AutogradModel.grads,) * 2 if variant == "autograd" else closed)
            times = {}
            with threads(1):
                for unit in ("ntk_linearised", "ntk", "poly_3"):
                    t = time.perf_counter()
                    out = lower_bounds._fit_stage(c, unit, init)
                    times[unit] = round(time.perf_counter() - t, 1)
                    numbers.append(json.dumps({k: {m: v for m, v in r.items() if m != "train_seconds"}
                                               for k, r in out["metrics"].items()}, sort_keys=True))
            print(f"{variant}: {times} s (1 thread)", flush=True)
        bl.LinearisedNet.grads, bl.KernelModel.grads = closed
        print("numbers identical:", len(set(numbers[0::3])) == len(set(numbers[1::3])) == len(set(numbers[2::3])) == 1)
    if "orders" in which:
        syn, lb = lower_bounds.lower_bounds_config("full")
        for n in (5, 4, 5, 4):
            t = time.perf_counter()
            lower_bounds.linear_stage_orders(syn, lb, orders=n)
            print(f"linear_stage_orders, {n} orders trained: {time.perf_counter() - t:.1f} s", flush=True)
