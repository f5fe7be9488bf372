#!/usr/bin/env bash
# The GPU part of the book's performance work (benchmarks, every chapter at the full profile), in steps that
# each fit one call of a lent GPU machine (10 minutes, no internet, no Jupyter, Python 3.12 with PyTorch).
#
# Here, on a machine with PyPI, once:
#   bash scripts/gpu_kit.sh prepare        # .whl/: Jupyter's kernel machinery as wheels; .gpu_data/: the CIFAR-10
#                                          # data of FP_DATA_DIR (default ../shared/data/cifar10). Both git-ignored.
# There, from the repository root, carrying .whl and .gpu_data, one step per call:
#   bash scripts/gpu_kit.sh bench          # python -m fp_helpers bench all -> results/bench/<gpu>.json (and <gpu>-compile.json)
#   bash scripts/gpu_kit.sh synthetic      # theory .. lower_bounds at FP_PROFILE=full, outputs written back, timed
#   bash scripts/gpu_kit.sh cifar          # run cifar --profile full -> results/cifar/full-gpu, run cifar-autoattack
#                                          # -> results/cifar/full-gpu_autoattack.json, run cifar-frozen-bn ->
#                                          # results/cifar/full-gpu_frozen_bn_followup.json; then the chapter
#   bash scripts/gpu_kit.sh appendix       # the execution-statistics appendix (reads the times just recorded)
#   bash scripts/gpu_kit.sh all            # ONE call for a lent GPU with little device time (15 minutes, start-up
#                                          # included): bench, cifar, synthetic, appendix, most valuable first,
#                                          # within GPU_KIT_BUDGET seconds (default 420); a step that would overrun
#                                          # is stopped and what it finished is packed; later steps are skipped
# Each step ends by packing every file it changed or created into $OUT/<step>.tar.gz (./gpu_out without $OUT);
# back here, `tar xzf <step>.tar.gz` in the repository root puts them in place (then review and commit).
#   bash scripts/gpu_kit.sh check          # here: dry run of the kit on this machine (CPU, quick profile)
# GPU_KIT_PROFILE=quick (default full) runs the chapter steps at another profile: for rehearsals here.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
PYVER=${GPU_PYTHON_VERSION:-3.12}
OUTDIR=${OUT:-$ROOT/gpu_out}
# Jupyter's kernel machinery (nbclient + ipykernel) and what it needs beyond the GPU image's packages
# (the image has numpy, matplotlib, seaborn, pandas, pyyaml, psutil, packaging, attrs, pygments, typing_extensions,
# python-dateutil; see the device library's KINDS.md). Versions: those of this repository's own environment.
WHEELS="nbclient==0.11.0 nbformat==5.11.1 fastjsonschema==2.22.3 jsonschema==4.26.0
jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 jupyter_client==8.10.0
jupyter_core==5.9.1 platformdirs==4.14.8 traitlets==5.16.1 pyzmq==27.3.0 tornado==6.6.1 ipykernel==7.4.0
comm==0.2.3 debugpy==1.8.22 ipython==9.18.1 ipython_pygments_lexers==1.1.1 decorator jedi==0.20.1 parso==0.8.7
matplotlib-inline==0.2.2 pexpect==4.9.0 ptyprocess==0.7.0 prompt_toolkit==3.0.53 wcwidth==0.9.4 stack-data==0.6.3
asttokens==3.0.2 executing==2.3.0 pure_eval==0.2.4"
AUTOATTACK=0.2.0  # pyautoattack, as in requirements.txt
PROFILE=${GPU_KIT_PROFILE:-full}
SYNTHETIC="book/theory.ipynb book/sparse_coding.ipynb book/clean_training.ipynb book/adversarial_training.ipynb book/lower_bounds.ipynb"

stamp() { touch "$ROOT/.gpu_kit_start"; sleep 1; }
timed() {  # run "$@", stopped (SIGINT, then SIGKILL) at the deadline of an `all` call, if there is one
  if [ -z "${GPU_KIT_DEADLINE:-}" ]; then "$@"; return; fi
  local left=$(( GPU_KIT_DEADLINE - $(date +%s) ))
  [ "$left" -gt 5 ] || { echo "no time left for: $*" >&2; return 124; }
  timeout --signal=INT --kill-after=15 "$left" "$@"
}
pack() {  # every file under book/ and results/ newer than the step's start
  mkdir -p "$OUTDIR"
  local list; list=$(find book results -type f -newer "$ROOT/.gpu_kit_start" | sort)
  [ -n "$list" ] || { echo "$1: no file changed, nothing to pack"; return 0; }
  echo "$list" | sed 's/^/changed: /'
  # shellcheck disable=SC2086
  tar czf "$OUTDIR/$1.tar.gz" $list
  echo "packed $OUTDIR/$1.tar.gz ($(du -h "$OUTDIR/$1.tar.gz" | cut -f1))"
}
use_wheels() {  # install the carried wheels where the kernel and this shell both see them
  if ! "$PY" -c "import nbclient, ipykernel, pyautoattack" 2>/dev/null; then
    [ -d .whl ] || { echo "no .whl/ here: run 'bash scripts/gpu_kit.sh prepare' where PyPI is reachable and carry .whl" >&2; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}  # the kernel runs in book/: it imports fp_helpers from here
  "$PY" -c "import nbclient, ipykernel, pyautoattack, fp_helpers, torch; print('kit ready: fp_helpers', fp_helpers.__version__, '| torch', torch.__version__, '| cuda', torch.cuda.is_available())"
}
data() {
  if [ -d .gpu_data/cifar10 ]; then export FP_DATA_DIR=$ROOT/.gpu_data/cifar10; fi
  [ -n "${FP_DATA_DIR:-}" ] || { echo "no CIFAR-10: carry .gpu_data (bash scripts/gpu_kit.sh prepare) or set FP_DATA_DIR" >&2; exit 2; }
}
export PYTHONUNBUFFERED=1 FP_PROGRESS=0

case "${1:-}" in
  prepare)
    rm -rf .whl && mkdir -p .whl
    # shellcheck disable=SC2086
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 -d .whl $WHEELS
    # AutoAttack (the CIFAR-10 chapter's attack check): its wheel is 42 MB, nearly all of it an example model; the
    # copy carried keeps the package's code only (its RECORD without the examples' lines)
    "$PY" -m pip download -q --no-deps --only-binary=:all: -d .whl/full "pyautoattack==$AUTOATTACK"
    "$PY" - .whl/full/pyautoattack-*.whl .whl <<'SLIM'
import sys, zipfile
from pathlib import Path
src, dst = Path(sys.argv[1]), Path(sys.argv[2]) / Path(sys.argv[1]).name
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if "/examples/" in item.filename:
            continue
        data = zin.read(item)
        if item.filename.endswith(".dist-info/RECORD"):
            data = b"".join(l for l in data.splitlines(True) if b"/examples/" not in l)
        zout.writestr(item, data)
print(f"{dst.name}: {src.stat().st_size // 1024} KiB -> {dst.stat().st_size // 1024} KiB (examples left out)")
SLIM
    rm -rf .whl/full
    src=${FP_DATA_DIR:-../shared/data/cifar10}
    rm -rf .gpu_data && mkdir -p .gpu_data && cp -r "$src" .gpu_data/cifar10
    du -sh .whl .gpu_data
    echo "carry: [\".whl\", \".gpu_data\"]  (64 MiB at most per call, with the working tree)";;
  bench)
    stamp; use_wheels
    timed "$PY" -m fp_helpers bench all || echo "bench failed or ran out of time (rc $?)" >&2
    if [ -z "${GPU_KIT_DEADLINE:-}" ]; then  # in an `all` call the compile variant is left out: minutes of compiling
      slug=$("$PY" -c "from fp_helpers.bench import device_slug; print(device_slug())")
      "$PY" -m fp_helpers bench all --compile --out "results/bench/$slug-compile.json" || echo "torch.compile variant failed" >&2
    fi
    pack bench;;
  synthetic)
    stamp; use_wheels
    # shellcheck disable=SC2086
    FP_PROFILE=$PROFILE timed "$PY" scripts/execute_notebooks.py $SYNTHETIC || echo "synthetic chapters: rc $?" >&2
    pack synthetic;;
  cifar)
    stamp; use_wheels; data
    if timed "$PY" -m fp_helpers run cifar --profile "$PROFILE" --data "$FP_DATA_DIR" \
        --save-dir "results/cifar/$PROFILE-gpu" --out "results/cifar/$PROFILE-gpu.json"; then
      # AutoAttack on the run's models (the chapter loads it; without it the chapter would run it itself)
      timed "$PY" -m fp_helpers run cifar-autoattack --profile "$PROFILE" --data "$FP_DATA_DIR" \
        --models "results/cifar/$PROFILE-gpu" --out "results/cifar/$PROFILE-gpu_autoattack.json" \
        || echo "run cifar-autoattack: rc $?" >&2
      # the frozen-batch-norm follow-up from the run's clean model (likewise loaded by the chapter)
      timed "$PY" -m fp_helpers run cifar-frozen-bn --profile "$PROFILE" --data "$FP_DATA_DIR" \
        --models "results/cifar/$PROFILE-gpu" --out "results/cifar/$PROFILE-gpu_frozen_bn_followup.json" \
        || echo "run cifar-frozen-bn: rc $?" >&2
      FP_PROFILE=$PROFILE timed "$PY" scripts/execute_notebooks.py book/cifar10.ipynb || echo "cifar chapter: rc $?" >&2
    else
      echo "run cifar failed or ran out of time (rc $?): the chapter is not re-executed" >&2
    fi
    pack cifar;;
  appendix)
    stamp; use_wheels
    FP_PROFILE=$PROFILE "$PY" scripts/execute_notebooks.py book/execution_statistics.ipynb
    pack appendix;;
  all)
    budget=${GPU_KIT_BUDGET:-420}
    export GPU_KIT_DEADLINE=$(( $(date +%s) + budget - 20 ))  # 20 s kept for the appendix
    for step in ${GPU_KIT_STEPS:-bench cifar synthetic}; do
      if [ $(( GPU_KIT_DEADLINE - $(date +%s) )) -le 30 ]; then echo "skipped $step: budget spent" >&2; continue; fi
      echo "== $step ($(( GPU_KIT_DEADLINE - $(date +%s) )) s left)"
      bash "$0" "$step" || echo "step $step: rc $?" >&2
    done
    unset GPU_KIT_DEADLINE
    bash "$0" appendix;;
  check)  # the kit end to end here, with PYTHON a Python that has torch and the plotting stack but no Jupyter:
    # wheels for its version, installed the way the GPU machine installs them, then one chapter at the quick profile
    ver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    GPU_PYTHON_VERSION=$ver bash "$0" prepare
    if "$PY" -c "import nbclient" 2>/dev/null; then echo "note: $PY already has nbclient: the wheels are not what runs" >&2; fi
    use_wheels
    tmp=$(mktemp -d)
    FP_PROFILE=quick "$PY" scripts/execute_notebooks.py --time-only --log "$tmp/times.json" book/theory.ipynb
    rm -rf "$tmp";;
  *) sed -n '2,/^set -euo pipefail/{/^set -euo/!p}' "$0"; exit 2;;
esac
