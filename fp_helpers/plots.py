"""One plotting style and the book's recurring figures. Every function returns the matplotlib figure."""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from . import purification as pur

PALETTE = {"clean": "#d1495b", "adversarial": "#00798c", "linear": "#edae49", "scratch": "#66a182",
           "init": "#8d96a3"}


def set_style() -> None:
    """The book's style: seaborn's whitegrid with a paper context and readable fonts."""
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.95)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "axes.titleweight": "bold",
                         "figure.figsize": (7.0, 3.6), "legend.frameon": False})


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def training_curves(histories: Mapping[str, "object"], keys: Sequence[tuple[str, str]] | None = None,
                    step_offsets: Mapping[str, int] | None = None):
    """Metrics over training steps, one panel per metric, one line per run (``name -> History``)."""
    keys = keys or [("clean_acc", "clean accuracy"), ("robust_acc", "PGD robust accuracy"),
                    ("mixture_norm_median", "median mixture norm"), ("top1_energy_median", "median top-1 energy")]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.0 * len(keys), 2.9), sharex=True)
    for name, hist in histories.items():
        off = (step_offsets or {}).get(name, 0)
        steps = np.array(hist.column("step")) + off
        for ax, (key, label) in zip(np.atleast_1d(axes), keys):
            ax.plot(steps, hist.column(key), label=name, color=PALETTE.get(name.split()[0]))
            ax.set_title(label, fontsize=10)
            ax.set_xlabel("SGD step")
            ax.set_ylim(-0.02, 1.02)  # every metric is an accuracy or a share: a small change looks small
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def robust_curves(curves: Mapping[str, tuple], tau: float | None = None, xlabel: str = r"$\ell_2$ radius $r$",
                  ylabel: str = "robust accuracy (PGD)"):
    """Robust accuracy vs radius. ``curves[name] = (radii, accs)`` with ``accs`` of shape (radii,) or
    (seeds, radii); several seeds are drawn as mean +- one standard deviation."""
    fig, ax = plt.subplots(figsize=(5.4, 3.4))
    for name, (radii, accs) in curves.items():
        a = np.atleast_2d(_np(accs))
        mean, sd = a.mean(0), a.std(0)
        color = PALETTE.get(name.split()[0])
        label = name + (f" ({a.shape[0]} seeds)" if a.shape[0] > 1 else "")
        ax.plot(radii, mean, marker="o", ms=3, label=label, color=color)
        if a.shape[0] > 1:
            ax.fill_between(radii, mean - sd, mean + sd, alpha=0.2, color=color)
    if tau is not None:
        ax.axvline(tau, color="k", ls=":", lw=1)
        ax.text(tau, 0.02, r" $\tau$", fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def spectra(weights: Mapping[str, torch.Tensor], M: torch.Tensor, n_neurons: int = 40, n_atoms: int = 20,
            vmax: float | None = 1.0):
    """Heat maps of sorted atom spectra ``<w_i, M_j>^2/||w_i||^2`` for the first neurons of each net, on one
    colour scale from 0 to ``vmax`` (None: the largest share shown, for spectra that are all small)."""
    fig, axes = plt.subplots(1, len(weights), figsize=(3.2 * len(weights), 3.0), squeeze=False)
    spectra_ = {name: -np.sort(-_np(pur.atom_spectrum(W[:n_neurons], M)), axis=1)[:, :n_atoms]
                for name, W in weights.items()}
    top = max(float(S.max()) for S in spectra_.values()) if vmax is None else vmax
    for ax, (name, S) in zip(axes[0], spectra_.items()):
        im = ax.imshow(S, aspect="auto", cmap="mako_r" if _has_seaborn() else "viridis", vmin=0, vmax=top)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("atoms, strongest first")
        ax.set_ylabel("neuron")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.85, label="share of energy")
    return fig


def metric_histograms(values: Mapping[str, torch.Tensor], xlabel: str, bins=30, vline: float | None = None,
                      ylabel: str = "neurons"):
    """Overlaid histograms of one metric (per neuron, or per sample with ``ylabel="samples"``) for several
    networks."""
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    for name, v in values.items():
        ax.hist(_np(v), bins=bins, alpha=0.55, label=name, color=PALETTE.get(name.split()[0]))
    if vline is not None:
        ax.axvline(vline, color="k", ls=":", lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def sparse_codes(z: torch.Tensor, x: torch.Tensor, decoded: torch.Tensor):
    """The sparse-coding data in three panels: codes ``z`` (samples x atoms), the same samples ``x`` in input
    space, and the decoded coordinates ``<M_j, x>`` against the true code entries."""
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
    top = 1.2 * float(np.abs(_np(z)).max())
    axes[0].imshow(_np(z), aspect="auto", cmap="RdBu_r", vmin=-top, vmax=top, interpolation="none")
    axes[0].set(title="codes $z$", xlabel="atom $j$", ylabel="sample")
    xs = float(np.quantile(np.abs(_np(x)), 0.99))
    axes[1].imshow(_np(x), aspect="auto", cmap="RdBu_r", vmin=-xs, vmax=xs, interpolation="none")
    axes[1].set(title="samples $x = Mz + \\xi$", xlabel="input coordinate")
    axes[2].scatter(_np(z).flatten(), _np(decoded).flatten(), s=4, alpha=0.5)
    axes[2].set(xlabel="true code $z_j$", ylabel="$\\langle M_j, x \\rangle$", title="decoding")
    fig.tight_layout()
    return fig


def _has_seaborn() -> bool:
    try:
        import seaborn  # noqa: F401
        return True
    except ImportError:
        return False


def model_class_curves(result: Mapping, label=None):
    """The lower-bound figure: robust accuracy vs radius for every model of a ``run lower-bounds`` result,
    clean-trained variants on the left, adversarially trained ones on the right, each panel with the
    FGM-trained two-layer network as the reference."""
    label = label or (lambda n: n)
    radii = result["radii"]
    names = [k for k, v in result.items() if isinstance(v, Mapping) and "curve" in v]
    groups = {"clean training": [n for n in names if not n.endswith("_adv") and not n.startswith("two_layer")],
              "adversarial training": [n for n in names if n.endswith("_adv") and n != "two_layer_adv"]}
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 5.0), sharey=True)
    cmap = plt.get_cmap("tab10")
    bases = list(dict.fromkeys(n.removesuffix("_adv") for n in names))  # one colour per model class, both panels
    for ax, (title, group) in zip(axes, groups.items()):
        for n in group:
            color = cmap(bases.index(n.removesuffix("_adv")) % 10)
            ax.plot(radii, result[n]["curve"], marker="o", ms=2.5, lw=1.2, color=color, label=label(n))
        if "two_layer_adv" in result:
            ax.plot(radii, result["two_layer_adv"]["curve"], color="k", lw=2.4, label=label("two_layer_adv"))
        ax.axvline(result["tau"], color="k", ls=":", lw=1)
        ax.text(result["tau"], 0.02, r" $\tau$", fontsize=9)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(r"$\ell_2$ radius" if result.get("norm", "l2") == "l2" else r"$\ell_\infty$ radius")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    axes[0].set_ylabel("robust accuracy (PGD)")
    axes[0].set_ylim(-0.02, 1.02)
    fig.tight_layout()
    return fig


def degree_sweep(result: Mapping):
    """Clean and PGD accuracy at ``tau`` against the polynomial degree, clean- and adversarially trained."""
    degrees = sorted(int(k.split("_")[1]) for k in result if k.startswith("poly_") and not k.endswith("_adv"))
    fig, ax = plt.subplots(figsize=(5.4, 3.4))
    for suffix, style, name in (("", "--", "clean-trained"), ("_adv", "-", "adversarially trained")):
        ax.plot(degrees, [result[f"poly_{p}{suffix}"]["clean_acc"] for p in degrees], style, marker="s", ms=4,
                color=PALETTE["linear"], label=f"clean accuracy, {name}")
        ax.plot(degrees, [result[f"poly_{p}{suffix}"]["robust_acc"] for p in degrees], style, marker="o", ms=4,
                color=PALETTE["clean"], label=f"PGD accuracy at tau, {name}")
    if "two_layer_adv" in result:
        ax.axhline(result["two_layer_adv"]["robust_acc"], color="k", lw=2, label="two-layer net, FGM-trained (PGD)")
    ax.set_xticks(degrees)
    ax.set_xlabel("polynomial degree p")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def filter_grid(filters: Mapping[str, torch.Tensor], n: int = 16):
    """First-layer filters ``(out, 3, k, k)``, one row per model, each filter rescaled to [0, 1] on its own
    (so the pattern, not the scale, is compared across rows)."""
    names = list(filters)
    n = min(n, min(f.shape[0] for f in filters.values()))
    fig, axes = plt.subplots(len(names), n, figsize=(0.55 * n, 0.62 * len(names) + 0.2), squeeze=False)
    for i, name in enumerate(names):
        w = filters[name][:n].detach().float().cpu()
        lo = w.flatten(1).min(1).values[:, None, None, None]
        hi = w.flatten(1).max(1).values[:, None, None, None]
        w = (w - lo) / (hi - lo).clamp_min(1e-12)
        for j in range(n):
            ax = axes[i, j]
            ax.imshow(w[j].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if j == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.subplots_adjust(left=0.2, wspace=0.08, hspace=0.08)
    return fig


def perturbation_images(x: torch.Tensor, perts: Mapping[str, torch.Tensor], n: int = 6):
    """Clean images (top row) and, for each model, its PGD perturbation rescaled to [0, 1] (rows below)."""
    rows = {"image": x[:n]} | {k: v[:n] for k, v in perts.items()}
    fig, axes = plt.subplots(len(rows), n, figsize=(1.1 * n, 1.15 * len(rows)), squeeze=False)
    for i, (name, imgs) in enumerate(rows.items()):
        imgs = imgs.detach().float().cpu()
        if name != "image":
            m = imgs.flatten(1).abs().amax(1).clamp_min(1e-12)[:, None, None, None]
            imgs = 0.5 + 0.5 * imgs / m
        for j in range(n):
            ax = axes[i, j]
            ax.imshow(imgs[j].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if j == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.subplots_adjust(left=0.22, wspace=0.05, hspace=0.05)
    return fig


def layer_cosines(rows: Sequence[Mapping]):
    """Per-layer cosine similarities of the CIFAR experiment (rows of ``cifar_experiments.layer_table``)."""
    idx = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(7.0, 3.4))
    for key, label, color in (("cos_clean_ft", "cos(clean, adversarial from clean)", PALETTE["adversarial"]),
                              ("cos_clean_init", "cos(clean, init)", PALETTE["clean"]),
                              ("cos_ft_init", "cos(adversarial from clean, init)", PALETTE["linear"]),
                              ("cos_scratch_init", "cos(adversarial from scratch, init)", PALETTE["scratch"])):
        ax.plot(idx, [r[key] for r in rows], marker="o", ms=3, label=label, color=color)
    ax.set_xticks(idx)
    ax.set_xticklabels([r["layer"].replace("layers.", "") for r in rows], rotation=60, fontsize=7, ha="right")
    ax.set_xlabel("layer (input to output)")
    ax.set_ylabel("cosine of the weights")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def epoch_curves(histories: Mapping[str, Mapping]):
    """Held-out clean and PGD accuracy after each epoch (the catastrophic-overfitting check)."""
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.0), sharey=True)
    for name, h in histories.items():
        for ax, key in zip(axes, ("val_clean_acc", "val_pgd_acc")):
            if h.get(key):
                ax.plot(h["epoch"][: len(h[key])], h[key], marker="o", ms=3, label=name)
    for ax, title in zip(axes, ("held-out clean accuracy", "held-out PGD accuracy")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
    axes[0].set_ylabel("accuracy")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def lowrank_study(study: Mapping, refs: Mapping[str, float] | None = None):
    """Left: cumulative energy share of the adversarial update in its top-r directions. Right: clean and PGD
    accuracy of the clean weights plus the update truncated to rank r (and of rank-r training), with
    horizontal reference lines ``refs[label] = accuracy`` (e.g. the clean network's and the full update's PGD
    accuracy)."""
    spec = study["spectrum"]
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(8.0, 3.2))
    share = _np(spec.energy_share)
    a0.plot(np.arange(1, len(share) + 1), share, color=PALETTE["adversarial"])
    a0.set(xscale="log", xlabel="rank r", ylabel="energy share of the update", ylim=(0, 1.02),
           title="spectrum of $W_{adv} - W_{clean}$")
    tr = study["truncated"]
    ranks = sorted(tr)
    a1.plot(ranks, [tr[r]["clean_acc"] for r in ranks], "o-", color=PALETTE["clean"], label="truncated: clean acc")
    a1.plot(ranks, [tr[r]["robust_acc"] for r in ranks], "o-", color=PALETTE["adversarial"], label="truncated: PGD acc")
    if study.get("trained"):
        t = study["trained"]
        a1.plot(sorted(t), [t[r]["robust_acc"] for r in sorted(t)], "s--", color=PALETTE["linear"],
                label="rank-r training: PGD acc")
    for (name, level), ls in zip((refs or {}).items(), (":", "-.", "--")):
        a1.axhline(level, color="0.35", lw=1, ls=ls, label=name)
    a1.set(xscale="log", xlabel="rank r", ylabel="accuracy", ylim=(0, 1.02), title="rank-r updates")
    a1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2)
    fig.tight_layout()
    return fig


def principle_trajectory(history: Sequence[Mapping], title: str | None = None):
    """Over FGM steps started from the clean network: PGD robust accuracy and the share of neurons for which
    the principle holds (``||beta_i w_i'|| > ||v_i||``, with ``w_i'`` the network at that step)."""
    rows = [r for r in history if "principle_holds" in r]
    if not rows:
        raise ValueError("history has no 'principle_holds' entries (log it with progress_eval(..., W_clean=...))")
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.0, 3.2))
    ax.plot(steps, [r["robust_acc"] for r in rows], "o-", color=PALETTE["adversarial"], label="PGD robust accuracy")
    ax.plot(steps, [r["principle_holds"] for r in rows], "s-", color=PALETTE["clean"],
            label="share of neurons where the principle holds")
    ax.plot(steps, [r["cos_init_median"] for r in rows], "^--", color=PALETTE["init"], label="median |cos(w, w0)|")
    ax.axhline(0.5, color="k", lw=0.6, ls=":", label="0.5: the principle holds for half the neurons")
    ax.set(xlabel="FGM steps from the clean network", ylabel="accuracy, share or |cos|", ylim=(0, 1.02), title=title)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2)
    fig.tight_layout()
    return fig


def regime_seeds(reg_seeds: Mapping[str, Sequence[Mapping]]):
    """Every regime's runs (``experiments.regime_seeds``: ``letter -> [result per seed]``) in the plane of the
    principle's share (x: neurons with ``||beta_i w_i'|| > ||v_i||``) and the adversarial network's PGD robust
    accuracy (y): one marker per seed, a regime's seeds joined to show their spread, its letter at their mean."""
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    lowest = min(r["adversarial"]["robust_acc"] for runs in reg_seeds.values() for r in runs)
    for i, (letter, runs) in enumerate(reg_seeds.items()):
        x = [r["principle"]["holds_fraction"] for r in runs]
        y = [r["adversarial"]["robust_acc"] for r in runs]
        c = colours[i % len(colours)]
        order = np.argsort(x)
        ax.plot(np.array(x)[order], np.array(y)[order], "o-", color=c, ms=5, lw=0.8, alpha=0.9,
                label=f"{letter} ({len(runs)} seed{'s' if len(runs) != 1 else ''})")
        ax.annotate(letter, (np.mean(x), np.mean(y)), textcoords="offset points", xytext=(6, 4), color=c,
                    fontweight="bold")
    ax.axvline(0.5, color="k", lw=0.6, ls=":")
    ax.set(xlabel="share of neurons where the principle holds", ylabel="PGD robust accuracy at $\\tau$",
           title="adversarially trained networks, every regime and seed",
           xlim=(0, 1), ylim=(max(0.0, np.floor(10 * lowest) / 10 - 0.05), 1.02))
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=4)
    fig.tight_layout()
    return fig


_SETTING_CMAPS = {"sgd": plt.cm.Blues, "adam": plt.cm.Oranges}


def _setting_shades(settings) -> dict:
    """A colour per ``(optimiser, lr)`` of a low-rank grid: the optimiser's colour map (:data:`_SETTING_CMAPS`, grey
    for another), darker for a larger rate."""
    shade = {}
    for o in dict.fromkeys(o for o, _ in settings):
        lrs = [lr for oo, lr in settings if oo == o]
        cmap = _SETTING_CMAPS.get(o, plt.cm.Greys)
        shade.update({(o, lr): cmap(x) for lr, x in zip(lrs, np.linspace(0.45, 0.95, len(lrs)))})
    return shade


def lowrank_grid(results: Mapping[str, Mapping]):
    """One column per ``run lowrank`` result (``{regime letter: result}``). Top: PGD accuracy against rank for
    every (optimiser, lr) of rank-r training (SGD in blues, solid; Adam in oranges, dashed), the truncated full
    update, and the clean network and full-rank FGM update as horizontal lines. Bottom: every training's FGM
    accuracy against its PGD accuracy, ringed in black where FGM accuracy exceeds clean accuracy
    (:func:`fp_helpers.experiments.leaks`): the training attack is defeated, the network is not robust."""
    from .experiments import grid_settings, leaks, optimiser_name, regime_label

    letters = sorted(results)
    fig, axes = plt.subplots(2, len(letters), figsize=(4.2 * len(letters), 6.4), squeeze=False)
    maps = {"sgd": ("o", "-"), "adam": ("s", "--")}  # marker, line style; colours: _setting_shades
    for j, L in enumerate(letters):
        res = results[L]
        top, bottom = axes[0, j], axes[1, j]
        regime = regime_label(L)
        settings = grid_settings(res)
        shade = _setting_shades(settings)
        for o, lr in settings:
            rows = sorted((t for t in res["trained"] if (t["optimiser"], t["lr"]) == (o, lr) and not t.get("diverged")),
                          key=lambda t: t["rank"])
            marker, ls = maps.get(o, ("^", ":"))
            name = f"{optimiser_name(o)} lr {lr:g}"
            top.plot([t["rank"] for t in rows], [t["robust_acc"] for t in rows], marker=marker, ls=ls,
                     color=shade[o, lr], label=name)
            bottom.scatter([t["robust_acc"] for t in rows], [t["fgm_acc"] for t in rows], marker=marker,
                           color=shade[o, lr], edgecolors=["k" if leaks(t) else "none" for t in rows], linewidths=1.4,
                           s=40, label=name)
        tr = sorted(res["truncated"], key=lambda t: t["rank"])
        top.plot([t["rank"] for t in tr], [t["robust_acc"] for t in tr], "k^-", lw=1.6, label="truncated full update")
        top.axhline(res["run"]["adversarial"]["robust_acc"], color=PALETTE["adversarial"], lw=1.2, ls=":",
                    label="full-rank FGM update")
        top.axhline(res["run"]["clean"]["robust_acc"], color=PALETTE["clean"], lw=1.2, ls="-.", label="clean network")
        ticks = sorted({t["rank"] for t in res["trained"]} | {t["rank"] for t in tr})
        top.set(xscale="log", xlabel="rank r", ylabel="PGD accuracy", ylim=(0, 1.02),
                title=f"regime {regime}: {res['config']['adv_steps']} FGM steps")
        top.set_xticks(ticks, [str(r) for r in ticks])
        top.minorticks_off()
        bottom.plot([0, 1], [0, 1], color="0.4", lw=0.8, ls=":")
        bottom.set(xlabel="PGD accuracy", ylabel="FGM accuracy", xlim=(0, 1.02), ylim=(0, 1.02),
                   title=f"regime {regime}: every rank-r training")
    axes[0, -1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    return fig


def lowrank_curves(results: Mapping[str, Mapping]):
    """One column per ``run lowrank`` result (``{regime letter: result}``), every rank-r training's logged curve
    against the FGM step: top, FGM accuracy minus clean accuracy (above zero: the training leaks, see
    :func:`fp_helpers.experiments.leaks`); bottom, how much of the clean network's projection on the dense
    direction ``u`` the weights keep (``u_kept``: 1 the clean pattern untouched, 0 nothing of it left, negative
    reversed), with the full-rank FGM
    update's final value as a line. Colours as :func:`lowrank_grid` (SGD blues, Adam oranges, darker = larger
    rate); line style by rank (dotted, dashed, solid from the smallest rank to the largest)."""
    from .experiments import grid_settings, optimiser_name, regime_label

    letters = sorted(results)
    fig, axes = plt.subplots(2, len(letters), figsize=(3.6 * len(letters), 5.6), squeeze=False, sharex="col")
    for j, L in enumerate(letters):
        res = results[L]
        top, bottom = axes[0, j], axes[1, j]
        regime = regime_label(L)
        shade = _setting_shades(grid_settings(res))
        ranks = sorted({t["rank"] for t in res["trained"]})
        styles = dict(zip(ranks, [":", "--", "-", "-."] * len(ranks)))
        for t in res["trained"]:
            if t.get("diverged") or not t.get("curve"):
                continue
            c = t["curve"]  # from step 0, the clean network
            steps = [r["step"] for r in c]
            kw = dict(color=shade[t["optimiser"], t["lr"]], ls=styles[t["rank"]], lw=1.3)
            top.plot(steps, [r["fgm_acc"] - r["clean_acc"] for r in c], **kw)
            bottom.plot(steps, [r["u_kept"] for r in c], **kw)
        for ax in (top, bottom):
            ax.axhline(0, color="0.4", lw=0.8)
        bottom.axhline(res["spectrum"]["u_kept"], color=PALETTE["adversarial"], lw=1.2, ls=":")
        top.set(ylabel="FGM acc. - clean acc.", title=f"regime {regime}: {res['config']['adv_steps']} FGM steps")
        bottom.set(xlabel="FGM step", ylabel="projection on u kept")
    from matplotlib.lines import Line2D

    first = results[letters[0]]
    handles = [Line2D([], [], color=_SETTING_CMAPS.get(o, plt.cm.Greys)(0.7), label=f"{optimiser_name(o)} (darker: larger lr)")
               for o in dict.fromkeys(o for o, _ in grid_settings(first))]
    ranks = sorted({t["rank"] for t in first["trained"]})
    handles += [Line2D([], [], color="0.3", ls=ls, label=f"rank {r}") for r, ls in zip(ranks, [":", "--", "-", "-."])]
    handles.append(Line2D([], [], color=PALETTE["adversarial"], ls=":", label="full-rank FGM update (end)"))
    axes[0, -1].legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    return fig


def attack_check(results: Mapping[str, Mapping], seeds: Mapping[str, Sequence[Mapping]] | None = None):
    """One panel per regime of ``{letter: run attack-check result}``: accuracy against the radius of its clean and
    adversarial network under the book's PGD (the config's evaluation attack, dashed), under the strongest
    gradient-free attack at each radius (dotted) and under every attack at once (solid); ``seeds`` (``{letter:
    [seed 0, seed 1, ...]}``): every seed's curves, thin, the first one's thick."""
    from .experiments import regime_label

    letters = sorted(results)
    fig, axes = plt.subplots(1, len(letters), figsize=(4.6 * len(letters), 3.4), squeeze=False, sharey=True)
    for ax, L in zip(axes[0], letters):
        runs = list((seeds or {}).get(L) or [results[L]])
        for k, res in enumerate(runs):
            cfg, radii = res["config"], res["radii"]
            pgd_name = f"PGD-{cfg['pgd_steps']} x{cfg['pgd_restarts']}"
            free = [n for n in res["attacks"] if n == "dense direction" or n.startswith("atoms")]
            lw, alpha = (1.8, 1.0) if k == 0 else (0.8, 0.5)
            for key, name in (("clean", "clean network"), ("adversarial", "adversarial")):
                c, color = res["curves"][key], PALETTE.get(key.split()[0])
                label = (lambda s: s) if k == 0 else (lambda s: None)
                ax.plot(radii, c["every attack"], color=color, lw=lw, alpha=alpha, label=label(f"{name}: every attack"))
                ax.plot(radii, c[pgd_name], color=color, lw=lw, alpha=alpha, ls="--", label=label(f"{name}: {pgd_name}"))
                ax.plot(radii, [min(c[n][i] for n in free) for i in range(len(radii))], color=color, lw=lw,
                        alpha=alpha, ls=":", label=label(f"{name}: best gradient-free"))
        ax.axvline(runs[0]["config"]["tau"], color="k", ls=":", lw=1)
        ax.text(runs[0]["config"]["tau"], 0.02, r" $\tau$", fontsize=9)
        ax.set_title(f"regime {regime_label(L)}" + (f" ({len(runs)} seeds)" if len(runs) > 1 else ""), fontsize=10)
        ax.set_xlabel(r"$\ell_2$ radius $r$")
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel("accuracy under the attack")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig
