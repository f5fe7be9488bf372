#!/usr/bin/env bash
# Reproduces results/regimes/*.json: the activation / initialisation regimes compared in the chapter
# "Adversarial training and purification" (section "Looking for the principle"), and their replicates with
# other seeds, results/regimes/seeds/<regime>_seed<k>.json (a seed draws its own dictionary, held-out points,
# initialisation and training samples). About 1-3 minutes per regime and seed on one CPU thread; run from the
# repository root:  bash results/regimes/run.sh
# SEEDS (default "0 1 2") picks the seeds, so two shells can share the work, e.g. on 2 cores:
#   OMP_NUM_THREADS=1 SEEDS=1 bash results/regimes/run.sh & OMP_NUM_THREADS=1 SEEDS="0 2" bash results/regimes/run.sh
# Resumable: a result whose file is current (same config, same code) is skipped (--skip-current), and an
# interrupted run resumes after its last completed training stage (checkpoints, see fp_helpers.checkpoints).
# Each file records the command that remakes it alone, and its provenance (python -m fp_helpers check FILE).
set -euo pipefail
PYTHON=${PYTHON:-python}
SEEDS=${SEEDS:-"0 1 2"}
run() {
  name=$1; shift
  for seed in $SEEDS; do
    if [ "$seed" = 0 ]; then
      "$PYTHON" -m fp_helpers run synthetic --profile full "$@" --skip-current --out "results/regimes/$name.json"
    else
      mkdir -p results/regimes/seeds
      "$PYTHON" -m fp_helpers run synthetic --profile full --seed "$seed" "$@" --skip-current \
        --out "results/regimes/seeds/${name}_seed$seed.json"
    fi
  done
}
run A_beta0_init01
run B_beta02_init01 --set beta=0.2 --set clean_steps=12000 --set adv_steps=12000 --set adv_lr=2
run C_beta03_init01 --set beta=0.3 --set clean_steps=12000 --set adv_steps=12000 --set adv_lr=2
run D_beta02_init003 --set beta=0.2 --set init_std=0.003 --set clean_steps=20000 --set adv_steps=12000 --set adv_lr=2
run E_beta01_init002 --set beta=0.1 --set init_std=0.002 --set clean_steps=20000 --set adv_steps=12000 --set adv_lr=2
run F_beta02_init003_long --set beta=0.2 --set init_std=0.003 --set clean_steps=20000 --set adv_steps=40000 --set adv_lr=2 --set log_every=2000
run G_beta015_init0002_long --set beta=0.15 --set init_std=0.002 --set clean_steps=20000 --set adv_steps=40000 --set adv_lr=2 --set log_every=2000
