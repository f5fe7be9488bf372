"""Draw book/principle.svg, the schematic of the principle on the intro page (no data; a diagram)."""

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

rng = np.random.default_rng(0)
d = 40
feature = np.zeros(d)
feature[7] = 1.0
mixture = 0.22 * np.ones(d) / 1.0 + 0.05 * rng.standard_normal(d)
mixture[7] = 0
panels = [("clean neuron $w_i$", feature + mixture, "#d1495b"),
          ("robust feature $\\beta_i w_i'$", feature, "#00798c"),
          ("dense mixture $v_i$", mixture, "#8d96a3")]
fig, axes = plt.subplots(1, 3, figsize=(9, 2.3), sharey=True)
for ax, (title, v, color) in zip(axes, panels):
    ax.bar(np.arange(d), v, color=color, width=0.8)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("atom $j$ (coordinates $\\langle w, M_j\\rangle$)")
    ax.set_xticks([])
    ax.axhline(0, color="k", lw=0.6)
axes[0].set_ylabel("weight")
fig.text(0.355, 0.55, "=", fontsize=22, ha="center")
fig.text(0.675, 0.55, "+", fontsize=22, ha="center")
fig.tight_layout(w_pad=3)
fig.savefig("book/principle.svg", bbox_inches="tight")
