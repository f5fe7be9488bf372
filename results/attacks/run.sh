#!/usr/bin/env bash
# Reproduces results/attacks/*.json: is the robustness of regimes A and G (results/regimes) real, or is PGD
# fooled (the dead zone of G passes no gradient)? For each, the regime's run (the same weights as
# results/regimes/<regime>.json), then the accuracy of its clean and adversarial network at every radius under
# FGM, the dense direction, two gradient-free attacks on the active atoms, PGD-20, PGD-20 x3 (the book's), PGD-100 x6,
# a transfer attack (PGD-100 x6 points crafted on the other network), and all of them at once
# (fp_helpers.experiments.run_attack_check). A few minutes each on 2 CPU cores; run from the repository root:
#   bash results/attacks/run.sh
# --skip-current: a file made by the current code with this config is kept.
set -euo pipefail
PYTHON=${PYTHON:-python}
"$PYTHON" -m fp_helpers run attack-check --profile full --skip-current --out results/attacks/A_beta0_init01.json
"$PYTHON" -m fp_helpers run attack-check --profile full --set beta=0.15 --set init_std=0.002 --set clean_steps=20000 \
  --set adv_steps=40000 --set adv_lr=2 --set log_every=2000 --skip-current --out results/attacks/G_beta015_init0002_long.json
# regime G at two more seeds (each draws its own dictionary, held-out points, initialisation and samples)
mkdir -p results/attacks/seeds
for seed in 1 2; do
  "$PYTHON" -m fp_helpers run attack-check --profile full --seed "$seed" --set beta=0.15 --set init_std=0.002 \
    --set clean_steps=20000 --set adv_steps=40000 --set adv_lr=2 --set log_every=2000 --skip-current \
    --out "results/attacks/seeds/G_beta015_init0002_long_seed$seed.json"
done
