"""Command line: reproduce the book's results without Jupyter.

    python -m fp_helpers run synthetic --profile quick|full [--seed N] [--set key=value ...] --out FILE.json
    python -m fp_helpers run lower-bounds --profile quick|full [--seed N] [--set key=value ...] --out FILE.json
    python -m fp_helpers run cifar --profile quick|full [--data PATH] [--set key=value ...] --out FILE.json
    python -m fp_helpers run lowrank --profile quick|full [--seed N] [--set key=value ...] --out FILE.json
    python -m fp_helpers run attack-check --profile quick|full [--seed N] [--set key=value ...] --out FILE.json
    python -m fp_helpers run cifar-autoattack --profile quick|full [--data PATH] --models DIR [--set ...] --out FILE.json
    python -m fp_helpers run cifar-frozen-bn --profile quick|full [--data PATH] --models DIR [--set ...] --out FILE.json
    python -m fp_helpers bench synthetic|ntk|cifar|all [--steps N] [--batch B] [--batches N] [--compile] [--out FILE]
    python -m fp_helpers check FILE_OR_FOLDER ...     # is a saved result current? (exit 1 if not)

Every ``run`` writes its JSON atomically, with ``config`` and ``provenance`` (the command, versions, code
fingerprint, device, date: see fp_helpers.provenance), and checkpoints each completed stage
(--checkpoint-dir, default $FP_CHECKPOINT_DIR or ~/.cache/fp_helpers/runs; "off": none): run the same
command again after an interruption and it resumes. --skip-current does nothing when --out already holds
the result of this config made by the current code.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from .provenance import CLI_EXPERIMENTS as EXPERIMENTS
from .provenance import ON_SAVED_RUN
from .provenance import write_json_atomic  # noqa: F401  (kept here: scripts import it from fp_helpers.__main__)

BENCHES = ("synthetic", "ntk", "cifar", "all")


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
    run.add_argument("--models", default=None,
                     help="cifar-autoattack, cifar-frozen-bn: the saved run they start from (the --save-dir of a "
                          "run cifar; required)")
    run.add_argument("--out", required=True, help="where to write the JSON results")
    run.add_argument("--progress", action="store_true", help="show progress bars")
    run.add_argument("--checkpoint-dir", default=None,
                     help="where completed stages are saved to resume an interrupted run (default: "
                          "$FP_CHECKPOINT_DIR, else ~/.cache/fp_helpers/runs; 'off': no checkpoints)")
    run.add_argument("--skip-current", action="store_true",
                     help="do nothing when --out already holds this config's result made by the current code")
    bench = sub.add_parser("bench", help="speed benchmarks")
    bench.add_argument("what", help=f"one of: {', '.join(BENCHES)}")
    bench.add_argument("--steps", type=int, default=300)
    bench.add_argument("--device", default=None)
    bench.add_argument("--batch", type=int, default=None, help="cifar: images per batch (default 512 on CUDA, 128 on CPU)")
    bench.add_argument("--batches", type=int, default=None,
                       help="cifar: timed batches (default 97 = one epoch on CUDA, 2 on CPU)")
    bench.add_argument("--warmup", type=int, default=None, help="cifar: untimed batches first (default 5 CUDA, 1 CPU, 3 CPU with --compile)")
    bench.add_argument("--compile", action="store_true", help="cifar: torch.compile our model")
    bench.add_argument("--out", default=None, help="all: where to write the JSON (default results/bench/<device>.json); "
                                                   "cifar: also write its figures there")
    check = sub.add_parser("check", help="say whether saved results are current (exit status 1 if one is not)")
    check.add_argument("paths", nargs="+", help="result JSON files, or folders holding result.json")
    return p


def _stamp_command(result: dict, experiment: str, profile: str, args, argv: list[str]) -> None:
    """The exact command that recomputes ``args.out`` (and the one that was typed) into the provenance."""
    from .provenance import cli_command

    data = (args.data or os.environ.get("FP_DATA_DIR")) if experiment in ("cifar",) + ON_SAVED_RUN else None
    extra = ("--data", data) if data else ()
    if experiment in ON_SAVED_RUN and args.models is not None:
        extra += ("--models", args.models)
    prov = result["provenance"]
    prov["command"] = cli_command(experiment, profile, result["config"], args.out, extra)
    prov["argv"] = "python -m fp_helpers " + shlex.join(argv)


def _is_current(args, cfg) -> bool:
    """With --skip-current: whether --out already holds a current result of ``cfg``."""
    if not args.skip_current or not Path(args.out).is_file():
        return False
    import json

    from .provenance import stale_reasons

    try:
        saved = json.loads(Path(args.out).read_text())
    except ValueError:
        return False
    reasons = stale_reasons(saved, cfg) if isinstance(saved, dict) else {"config": ["not a result"]}
    if reasons["config"] or reasons["code"]:
        return False
    print(f"{args.out} is current (same config, same code): nothing to do")
    return True


def _check(paths: list[str]) -> int:
    from .provenance import read_result, recompute_hint, stale_reasons

    bad = 0
    for p in paths:
        path, data = read_result(p)
        reasons = stale_reasons(data)
        problems = reasons["config"] + reasons["code"]
        prov = data.get("provenance") or {}
        if problems:
            bad += 1
            print(f"STALE   {path}: {'; '.join(problems)}\n        {recompute_hint(data)}")
        else:
            print(f"current {path} (made {prov.get('date')} by {prov.get('commit')}, code {prov['code']['hash']})")
    return 1 if bad else 0


def _run_on_synthetic_config(experiment: str, fn, profile: str, args, argv: list[str]):
    """``run lowrank`` and ``run attack-check``: a synthetic run's config from the command line, then ``fn`` on it,
    stamped with the command and written to ``--out``. Returns ``(result, cfg)``; ``(None, cfg)`` when
    ``--skip-current`` found the result already there."""
    from .experiments import synthetic_config

    cfg = synthetic_config(profile, args.overrides, seed=args.seed)  # validates before any work
    if _is_current(args, cfg):
        return None, cfg
    result = fn(cfg, device=args.device, progress=args.progress, profile=profile, checkpoint_dir=args.checkpoint_dir)
    _stamp_command(result, experiment, profile, args, argv)
    write_json_atomic(args.out, result)
    return result, cfg


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            return _check(args.paths)
        if args.command == "run":
            if args.experiment not in EXPERIMENTS:
                raise ValueError(f"unknown experiment {args.experiment!r}; allowed: {', '.join(EXPERIMENTS)}")
            from .provenance import pin
            from .runs import get_profile

            pin(args.experiment)  # the result will name the code that runs now, whatever is edited meanwhile

            profile = get_profile(args.profile)
            if args.experiment == "synthetic":
                from .experiments import run_synthetic, synthetic_config

                cfg = synthetic_config(profile, args.overrides, seed=args.seed)  # validates before any work
                if _is_current(args, cfg):
                    return 0
                result = run_synthetic(cfg, device=args.device, progress=args.progress, profile=profile,
                                       checkpoint_dir=args.checkpoint_dir)
                _stamp_command(result.metrics, "synthetic", profile, args, argv)
                write_json_atomic(args.out, result.metrics)
                m = result.metrics
                print(f"wrote {args.out} in {m['seconds']:.1f}s | clean net: acc {m['clean']['clean_acc']:.3f}, "
                      f"PGD {m['clean']['robust_acc']:.3f} | adversarial net: acc "
                      f"{m['adversarial']['clean_acc']:.3f}, PGD {m['adversarial']['robust_acc']:.3f}")
            elif args.experiment == "lowrank":
                from .experiments import run_lowrank

                result, cfg = _run_on_synthetic_config("lowrank", run_lowrank, profile, args, argv)
                if result is None:
                    return 0
                best = max((t for t in result["trained"] if not t["diverged"]), key=lambda t: t["robust_acc"],
                           default=None)
                print(f"wrote {args.out} in {result['seconds']:.1f}s | full update: PGD "
                      f"{result['run']['adversarial']['robust_acc']:.3f} | best rank-r training: "
                      + (f"rank {best['rank']} {best['optimiser']} lr {best['lr']:g}: clean {best['clean_acc']:.3f}, "
                         f"PGD {best['robust_acc']:.3f}" if best else "all diverged"))
            elif args.experiment == "attack-check":
                from .experiments import run_attack_check

                result, cfg = _run_on_synthetic_config("attack-check", run_attack_check, profile, args, argv)
                if result is None:
                    return 0
                i = result["radii"].index(min(result["radii"], key=lambda r: abs(r - cfg.tau)))
                print(f"wrote {args.out} in {result['seconds']:.1f}s | at tau={cfg.tau:g}, every attack at once: "
                      + ", ".join(f"{k} net {result['curves'][k]['every attack'][i]:.3f}" for k in ("clean", "adversarial")))
            elif args.experiment == "cifar":
                from .cifar_experiments import cifar_config, run_cifar, save_run

                cfg = cifar_config(profile, args.overrides, seed=args.seed)
                if _is_current(args, cfg):
                    return 0
                result = run_cifar(cfg, data_dir=args.data, device=args.device, progress=args.progress,
                                   profile=profile, keep_models=args.save_dir is not None,
                                   checkpoint_dir=args.checkpoint_dir)
                _stamp_command(result, "cifar", profile, args, argv)
                if args.save_dir is not None:
                    save_run(result, args.save_dir)
                write_json_atomic(args.out, {k: v for k, v in result.items() if not k.startswith("_")})
                ex = result["experiments"]
                print(f"wrote {args.out} in {result['seconds']:.1f}s | {result['data']} | {result['attack']}: "
                      + ", ".join(f"{k} {v['clean_acc']:.3f}/{v['robust_acc']:.3f}" for k, v in ex.items()))
            elif args.experiment in ON_SAVED_RUN:
                from . import cifar_experiments as cx

                if args.models is None or not (Path(args.models) / "result.json").is_file():
                    raise ValueError(f"run {args.experiment} starts from a saved run: --models must be a folder "
                                     f"written by `run cifar --save-dir` (got {args.models!r})")
                cfg = cx.cifar_config(profile, args.overrides, seed=args.seed)
                if _is_current(args, cfg):
                    return 0
                run = {"cifar-autoattack": cx.run_cifar_autoattack, "cifar-frozen-bn": cx.run_cifar_frozen_bn}
                result = run[args.experiment](cfg, models_dir=args.models, data_dir=args.data, device=args.device,
                                              progress=args.progress, profile=profile)
                _stamp_command(result, args.experiment, profile, args, argv)
                write_json_atomic(args.out, result)
                if args.experiment == "cifar-autoattack":
                    print(f"wrote {args.out} in {result['seconds']:.1f}s | AutoAttack ({result['version']}) on "
                          f"{result['n']} images: " + ", ".join(f"{k} {v['acc']:.3f}" for part in ("main", "other")
                                                                  for k, v in result[part]["models"].items()))
                else:
                    print(f"wrote {args.out} in {result['seconds']:.1f}s | clean/PGD accuracy: "
                          + ", ".join(f"{k} {v['clean_acc']:.3f}/{v['robust_acc']:.3f}"
                                      for k, v in result["runs"].items()))
            else:
                from .lower_bounds import lower_bounds_config, model_names, run_lower_bounds

                syn, lb = lower_bounds_config(profile, args.overrides, seed=args.seed)
                if _is_current(args, (syn, lb)):
                    return 0
                result = run_lower_bounds(syn, lb, device=args.device, progress=args.progress, profile=profile,
                                          checkpoint_dir=args.checkpoint_dir)
                _stamp_command(result, "lower-bounds", profile, args, argv)
                write_json_atomic(args.out, result)
                print(f"wrote {args.out} in {result['seconds']:.1f}s | PGD accuracy at tau={result['tau']:g}: "
                      + ", ".join(f"{k} {result[k]['robust_acc']:.3f}" for k in model_names(result)))
        elif args.command == "bench":
            if args.what not in BENCHES:
                raise ValueError(f"unknown benchmark {args.what!r}; allowed: {', '.join(BENCHES)}")
            if args.steps < 1:
                raise ValueError(f"--steps must be a positive int, got {args.steps}")
            from . import bench
            from .provenance import pin

            pin("bench")
            if args.what == "synthetic":
                bench.bench_synthetic(steps=args.steps, device=args.device)
            elif args.what == "ntk":
                bench.bench_ntk(device=args.device)
            else:
                cifar_kw = {"batch": args.batch, "batches": args.batches, "warmup": args.warmup,
                            "compile": args.compile}
                if args.what == "all":
                    bench.bench_all(args.out, device=args.device, synthetic={"steps": args.steps}, cifar=cifar_kw)
                else:
                    r = bench.bench_cifar(device=args.device, **cifar_kw)
                    if args.out is not None:
                        write_json_atomic(args.out, {"environment": bench.bench_environment(args.device), "cifar": r})
                        print(f"wrote {args.out}")
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
