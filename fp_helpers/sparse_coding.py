"""The sparse-coding distribution ``x = M z + xi`` with label ``y = sign(<w*, z>)``.

- ``M`` is a ``d x d`` orthonormal dictionary; its columns ``M_j`` are the features ("atoms").
- ``z`` has exactly ``k`` non-zero coordinates, magnitudes in ``[z_min, z_max]``, random signs.
- ``xi`` is dense Gaussian noise with total expected norm ``noise`` (``noise / sqrt(d)`` per coordinate).
- ``w*`` is the all-ones vector by default (``w_star="ones"``) or has i.i.d. entries in ``[0.5, 1.5]``
  (``w_star="random"``).

Sampling is batched and avoids the dense ``d x d`` product: ``M z`` is a sum of ``k`` gathered atoms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .runs import get_device


@dataclass(frozen=True)
class SparseCodingConfig:
    d: int = 400
    k: int = 7
    noise: float = 0.1
    z_min: float = 1.0
    z_max: float = 1.0
    dictionary: str = "random"  # "random" orthonormal or "identity"
    w_star: str = "ones"  # "ones" or "random"

    def validate(self) -> "SparseCodingConfig":
        for name in ("d", "k"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.k > self.d:
            raise ValueError(f"k={self.k} must be at most d={self.d} (a code has k of the d atoms)")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"noise must be a finite number >= 0, got {self.noise!r}")
        if not (0 < self.z_min <= self.z_max and math.isfinite(self.z_max)):
            raise ValueError(
                f"code magnitudes need 0 < z_min <= z_max < inf, got z_min={self.z_min!r}, z_max={self.z_max!r}"
            )
        if self.dictionary not in ("random", "identity"):
            raise ValueError(f"unknown dictionary {self.dictionary!r}; allowed: random, identity")
        if self.w_star not in ("ones", "random"):
            raise ValueError(f"unknown w_star {self.w_star!r}; allowed: ones, random")
        return self


class SparseCoding:
    """A sampler for the sparse-coding distribution.

    ``dist = SparseCoding(SparseCodingConfig(d=400, k=7), seed=0)``; ``x, y = dist.sample(n, gen)``.
    The dictionary and ``w*`` are fixed by ``seed``; samples come from the generator you pass.
    """

    def __init__(self, config: SparseCodingConfig = SparseCodingConfig(), seed: int = 0, device=None):
        self.config = config.validate()
        self.device = get_device(device)
        d = config.d
        g = torch.Generator().manual_seed(int(seed) + 7919)  # dictionary seed, separate from sampling
        if config.dictionary == "identity":
            M = torch.eye(d)
        else:
            q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
            M = (q * torch.sign(torch.diagonal(r))).float()  # Haar-distributed orthogonal matrix
        if config.w_star == "ones":
            w = torch.ones(d)
        else:
            w = 0.5 + torch.rand(d, generator=g)
        self.M = M.to(self.device)  # columns are the atoms
        self.atoms = self.M.T.contiguous()  # row j is atom M_j (fast gather)
        self.w_star = w.to(self.device)
        u = self.M @ self.w_star
        self.u = u / u.norm()  # the dense direction: the best linear classifier's normal

    @property
    def d(self) -> int:
        return self.config.d

    @property
    def k(self) -> int:
        return self.config.k

    def sample_code(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Support indices ``(n, k)`` and signed values ``(n, k)`` of ``n`` sparse codes."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"number of samples must be a positive int, got {n!r}")
        cfg = self.config
        dev = self.device
        idx = self._supports(n, generator)
        signs = torch.randint(0, 2, (n, cfg.k), generator=generator, device=dev).mul_(2).sub_(1).float()
        if cfg.z_max > cfg.z_min:
            mags = cfg.z_min + (cfg.z_max - cfg.z_min) * torch.rand(n, cfg.k, generator=generator, device=dev)
            vals = signs * mags
        else:
            vals = signs * cfg.z_min
        return idx, vals

    def _supports(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``(n, k)`` indices of uniformly random k-subsets of ``{0..d-1}``.

        For sparse codes (``k^2 <= d``) draw k indices and redraw every row that repeats one: each
        ordered k-tuple of distinct indices is equally likely, so each subset is. This costs O(n k)
        instead of the O(n d) of ranking d random keys, which is the fallback for dense codes.
        """
        d, k, dev = self.d, self.k, self.device
        if k * k > d:
            return torch.rand(n, d, generator=generator, device=dev).topk(k, dim=1, sorted=False).indices
        idx = torch.randint(0, d, (n, k), generator=generator, device=dev)
        while True:
            s = idx.sort(1).values
            bad = (s[:, 1:] == s[:, :-1]).any(1).nonzero().squeeze(1)
            if bad.numel() == 0:
                return idx
            idx[bad] = torch.randint(0, d, (bad.numel(), k), generator=generator, device=dev)

    def encode_dense(self, idx: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
        z = torch.zeros(idx.shape[0], self.d, device=idx.device)
        return z.scatter_(1, idx, vals)

    def label(self, idx: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
        s = (self.w_star[idx] * vals).sum(1)
        return torch.where(s >= 0, 1.0, -1.0)

    def sample(
        self, n: int, generator: torch.Generator, return_code: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """Draw ``n`` fresh samples: ``(x, y)`` or, with ``return_code``, ``(x, y, z)``."""
        idx, vals = self.sample_code(n, generator)
        x = F.embedding_bag(idx, self.atoms, per_sample_weights=vals, mode="sum")  # M z, O(n k d)
        if self.config.noise > 0:
            sd = self.config.noise / math.sqrt(self.d)
            x.add_(torch.randn(n, self.d, generator=generator, device=self.device), alpha=sd)
        y = self.label(idx, vals)
        if return_code:
            return x, y, self.encode_dense(idx, vals)
        return x, y

    def code_of(self, x: torch.Tensor) -> torch.Tensor:
        """Coordinates of ``x`` in the dictionary: ``M^T x`` (the noisy code)."""
        return x @ self.M

    def linear_margin(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Signed l2 distance of each point to the best linear classifier's boundary ``<u, x> = 0``."""
        return y * (x @ self.u)
