"""Where one synthetic clean-training step spends its time on a CPU, at the full profile's size (d=400,
m=300, batch 128), in one thread: the PyTorch profiler's table over 200 steps (drawing a batch of fresh
samples, then the network's closed-form loss and weight gradient), and the achieved GFLOP/s of the two
matrix products. Usage: ``python scripts/step_profile.py [threads]`` (default 1). A few seconds."""

import sys

import torch
from torch.profiler import ProfilerActivity, profile

from fp_helpers import experiments

if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    cfg = experiments.synthetic_config("full")
    s = experiments.setup(cfg, "cpu")
    net = experiments.init_net(s)
    steps = 200

    def step():
        x, y = s.dist.sample(cfg.batch, s.gen)
        net.grads(x, y)

    for _ in range(20):  # warm-up
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    print(f"{torch.get_num_threads()} thread(s); d={cfg.d} m={cfg.m} batch={cfg.batch}; {steps} steps")
    print(events.table(sort_by="self_cpu_time_total", row_limit=12))
    total = sum(e.self_cpu_time_total for e in events)
    mm = sum(e.self_cpu_time_total for e in events if e.key == "aten::mm")
    flops = 2 * 2 * cfg.batch * cfg.d * cfg.m * steps  # two products of batch x d x m per step
    print(f"per step: {total / steps / 1e3:.3f} ms; matrix products {mm / total:.0%} of it, "
          f"at {flops / (mm * 1e-6) / 1e9:.1f} GFLOP/s")
