#!/usr/bin/env bash
# Reproduces results/regimes/*.json: the activation / initialisation regimes compared in the chapter
# "Adversarial training and purification" (section "Looking for the principle"). About 1.5-2 minutes per
# regime on one CPU thread; run from the repository root:  bash results/regimes/run.sh
# Resumable: a regime whose file is current (same config, same code) is skipped (--skip-current), and an
# interrupted regime resumes after its last completed training stage (checkpoints, see fp_helpers.checkpoints).
# Each file records the command that remakes it alone, and its provenance (python -m fp_helpers check FILE).
set -euo pipefail
PYTHON=${PYTHON:-python}
run() { name=$1; shift; "$PYTHON" -m fp_helpers run synthetic --profile full "$@" --skip-current --out "results/regimes/$name.json"; }
run A_beta0_init01
run B_beta02_init01 --set beta=0.2 --set clean_steps=12000 --set adv_steps=12000 --set adv_lr=2
run C_beta03_init01 --set beta=0.3 --set clean_steps=12000 --set adv_steps=12000 --set adv_lr=2
run D_beta02_init003 --set beta=0.2 --set init_std=0.003 --set clean_steps=20000 --set adv_steps=12000 --set adv_lr=2
run E_beta01_init002 --set beta=0.1 --set init_std=0.002 --set clean_steps=20000 --set adv_steps=12000 --set adv_lr=2
run F_beta02_init003_long --set beta=0.2 --set init_std=0.003 --set clean_steps=20000 --set adv_steps=40000 --set adv_lr=2 --set log_every=2000
run G_beta015_init0002_long --set beta=0.15 --set init_std=0.002 --set clean_steps=20000 --set adv_steps=40000 --set adv_lr=2 --set log_every=2000
