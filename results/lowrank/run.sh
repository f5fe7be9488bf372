#!/usr/bin/env bash
# Reproduces results/lowrank/*.json and results/lowrank/seeds/*.json: the low-rank question of the chapter "Adversarial training and purification"
# (section "Low-rank adversarial training") asked with other optimisers and learning rates, in regime A (the
# chapter's run) and regime G (robust, with the principle holding for about half of the neurons): for each, the
# run itself (the same weights as results/regimes/<regime>.json), the truncations of its full update, and
# rank-r FGM training at ranks 1, 4, 16 with SGD (lr 0.01, 0.03, 0.1) and Adam (lr 0.001, 0.003, 0.01)
# (fp_helpers.experiments.LOWRANK_GRID); for every update, where it points relative to the dense direction u
# (purification.update_directions), and for every rank-r training its curve (clean, FGM, PGD-10 accuracy, projection
# on u kept, every log_every steps). About 5 minutes (A) and 25-45 minutes (G) on 2 CPU cores; run from the
# repository root:  bash results/lowrank/run.sh
# Resumable and skippable as results/regimes/run.sh (--skip-current); each file records the command that
# remakes it alone and its provenance (python -m fp_helpers check FILE).
set -euo pipefail
PYTHON=${PYTHON:-python}
"$PYTHON" -m fp_helpers run lowrank --profile full --skip-current --out results/lowrank/A_beta0_init01.json
"$PYTHON" -m fp_helpers run lowrank --profile full --set beta=0.15 --set init_std=0.002 --set clean_steps=20000 \
  --set adv_steps=40000 --set adv_lr=2 --set log_every=2000 --skip-current --out results/lowrank/G_beta015_init0002_long.json
# control for the step budget: regime A with G's number of FGM steps (40,000 instead of 4,000), about 45 minutes
"$PYTHON" -m fp_helpers run lowrank --profile full --set adv_steps=40000 --set log_every=2000 --skip-current \
  --out results/lowrank/Along_beta0_init01_40k.json
# regimes A and G at two more seeds (each draws its own dictionary, held-out points, initialisation and samples; the
# chapter reads them with experiments.regime_seeds), about 5 minutes each
mkdir -p results/lowrank/seeds
for seed in 1 2; do
  "$PYTHON" -m fp_helpers run lowrank --profile full --seed "$seed" --skip-current \
    --out "results/lowrank/seeds/A_beta0_init01_seed$seed.json"
done
# regime G at two more seeds, about 10-25 minutes each
for seed in 1 2; do
  "$PYTHON" -m fp_helpers run lowrank --profile full --seed "$seed" --set beta=0.15 --set init_std=0.002 \
    --set clean_steps=20000 --set adv_steps=40000 --set adv_lr=2 --set log_every=2000 --skip-current \
    --out "results/lowrank/seeds/G_beta015_init0002_long_seed$seed.json"
done
