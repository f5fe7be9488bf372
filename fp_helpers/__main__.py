"""Command line: reproduce the book's results without Jupyter.

    python -m fp_helpers run synthetic --profile quick|full [--seed N] [--set key=value ...] --out FILE.json
    python -m fp_helpers run lower-bounds --profile quick|full [--seed N] [--set key=value ...] --out FILE.json
    python -m fp_helpers run cifar --profile quick|full [--data PATH] [--set key=value ...] --out FILE.json
    python -m fp_helpers bench synthetic|ntk [--steps N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

EXPERIMENTS = ("synthetic", "lower-bounds", "cifar")
BENCHES = ("synthetic", "ntk")


def write_json_atomic(path: str | Path, obj) -> None:
    """Write JSON to a temporary file in the same folder, then rename: never a half-written result."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fp_helpers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an experiment and write its numbers as JSON")
    run.add_argument("experiment", help=f"one of: {', '.join(EXPERIMENTS)}")
    run.add_argument("--profile", default=None, help="quick or full (default: $FP_PROFILE, quick under CI)")
    run.add_argument("--seed", type=int, default=None)
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config field (repeatable), e.g. --set d=600 --set k=9")
    run.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    run.add_argument("--data", default=None, help="CIFAR-10 folder or .npz (default: $FP_DATA_DIR, then the cache)")
    run.add_argument("--save-dir", default=None, help="cifar: also save the trained models there (notebooks load them)")
    run.add_argument("--out", required=True, help="where to write the JSON results")
    run.add_argument("--progress", action="store_true", help="show progress bars")
    bench = sub.add_parser("bench", help="speed benchmarks")
    bench.add_argument("what", help=f"one of: {', '.join(BENCHES)}")
    bench.add_argument("--steps", type=int, default=300)
    bench.add_argument("--device", default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            if args.experiment not in EXPERIMENTS:
                raise ValueError(f"unknown experiment {args.experiment!r}; allowed: {', '.join(EXPERIMENTS)}")
            from .runs import get_profile

            profile = get_profile(args.profile)
            if args.experiment == "synthetic":
                from .experiments import run_synthetic, synthetic_config

                cfg = synthetic_config(profile, args.overrides, seed=args.seed)  # validates before any work
                result = run_synthetic(cfg, device=args.device, progress=args.progress, profile=profile)
                write_json_atomic(args.out, result.metrics)
                m = result.metrics
                print(f"wrote {args.out} in {m['seconds']:.1f}s | clean net: acc {m['clean']['clean_acc']:.3f}, "
                      f"PGD {m['clean']['robust_acc']:.3f} | adversarial net: acc "
                      f"{m['adversarial']['clean_acc']:.3f}, PGD {m['adversarial']['robust_acc']:.3f}")
            elif args.experiment == "cifar":
                from .cifar_experiments import cifar_config, run_cifar, save_run

                cfg = cifar_config(profile, args.overrides, seed=args.seed)
                result = run_cifar(cfg, data_dir=args.data, device=args.device, progress=args.progress,
                                   profile=profile, keep_models=args.save_dir is not None)
                if args.save_dir is not None:
                    save_run(result, args.save_dir)
                write_json_atomic(args.out, {k: v for k, v in result.items() if not k.startswith("_")})
                ex = result["experiments"]
                print(f"wrote {args.out} in {result['seconds']:.1f}s | {result['data']} | {result['attack']}: "
                      + ", ".join(f"{k} {v['clean_acc']:.3f}/{v['robust_acc']:.3f}" for k, v in ex.items()))
            else:
                from .lower_bounds import lower_bounds_config, model_names, run_lower_bounds

                syn, lb = lower_bounds_config(profile, args.overrides, seed=args.seed)
                result = run_lower_bounds(syn, lb, device=args.device, progress=args.progress, profile=profile)
                write_json_atomic(args.out, result)
                print(f"wrote {args.out} in {result['seconds']:.1f}s | PGD accuracy at tau={result['tau']:g}: "
                      + ", ".join(f"{k} {result[k]['robust_acc']:.3f}" for k in model_names(result)))
        elif args.command == "bench":
            if args.what not in BENCHES:
                raise ValueError(f"unknown benchmark {args.what!r}; allowed: {', '.join(BENCHES)}")
            from . import bench

            if args.what == "synthetic":
                bench.bench_synthetic(steps=args.steps, device=args.device)
            else:
                bench.bench_ntk(device=args.device)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
