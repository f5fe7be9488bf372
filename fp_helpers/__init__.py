"""fp_helpers: the code behind the Feature Purification book.

Every heavy computation the book shows lives here; the notebooks only call it.
Modules (one job each):

- ``runs``          profiles, device, seeds, config overrides, the version banner
- ``provenance``    what made each result (config, versions, code fingerprint, date) and stale-result warnings
- ``checkpoints``   resumable long runs: each completed stage saved atomically, skipped on a rerun
- ``sparse_coding`` the sparse-coding data distribution ``x = M z + xi``
- ``networks``      the two-layer network with an odd smoothed (thresholded) ReLU
- ``attacks``       FGM and PGD in l2 / l-inf, the dense-direction attack, robust accuracy
- ``training``      clean and adversarial SGD loops (online or fixed training set)
- ``purification``  atom spectra, dense mixtures, the principle's decomposition
- ``experiments``   the synthetic experiment behind the chapters and the CLI
- ``baselines``     linear, polynomial-kernel, NTK and linearised models for the lower bound
- ``lower_bounds``  the lower-bound experiment (``run lower-bounds``)
- ``cifar``         CIFAR-10 loading (checksums, mirror), augmentation, normalisation
- ``cifar_models``  PreAct ResNet-18, a small ResNet, low-rank updates ``W_clean + A B``
- ``cifar_train``   clean / FGSM-RS / PGD training with checkpoints, resume, overfitting check
- ``cifar_experiments`` the CIFAR-10 experiment (``run cifar``), layer comparisons, load-else-train
- ``plots``         one plotting style and the book's figures
- ``bench``         speed benchmarks (``python -m fp_helpers bench synthetic|ntk|cifar|all``), notebook times
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
