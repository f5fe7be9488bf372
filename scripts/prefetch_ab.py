"""A/B timing of synthetic training with and without drawing the next block of samples in a background thread
(``fp_helpers.training._Batches``, ``prefetch``), interleaved so that a change in the machine's speed hits
both alike. Usage: ``FP_PROGRESS=0 python scripts/prefetch_ab.py [repeats]``: clean and FGM training, 3,000
steps each at the full profile's size, from the same start; prints the seconds of each and checks that both
variants end with bit-identical weights. About 1.5 minutes per repeat on 2 cores."""

import sys
import time
from dataclasses import replace

import torch

from fp_helpers import experiments, training
from fp_helpers.networks import TwoLayerNet

if __name__ == "__main__":
    cfg = experiments.synthetic_config("full")
    s = experiments.setup(cfg, "cpu")
    start = TwoLayerNet(cfg.d, cfg.net_config(), generator=s.gen)
    init = training._Batches.__init__
    times: dict = {}
    for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
        for attack in ("none", "fgm"):
            weights = []
            for prefetch in (False, True):
                training._Batches.__init__ = lambda self, *a, _p=prefetch, **kw: init(self, *a, **{**kw, "prefetch": _p})
                net = TwoLayerNet(cfg.d, start.config, weight=start.weight.detach())
                tcfg = replace(cfg.adv_train_config(), attack=attack, steps=3000, log_every=10**9)
                t = time.perf_counter()
                training.train(net, s.dist, tcfg, torch.Generator().manual_seed(1), progress=False)
                times.setdefault((attack, prefetch), []).append(round(time.perf_counter() - t, 2))
                weights.append(net.weight.detach().clone())
            assert torch.equal(*weights), "prefetching changed the weights"
    training._Batches.__init__ = init
    for (attack, prefetch), ts in times.items():
        print(f"{'clean' if attack == 'none' else attack.upper()} training, prefetch={prefetch}: {ts} s "
              f"(mean {sum(ts) / len(ts):.2f})")
