"""CIFAR-10 data: loading with integrity checks, subsets, augmentation, normalisation, minibatches.

``load_cifar10`` takes the first of: (1) ``data_dir``, else ``$FP_DATA_DIR``: an ``.npz`` file, a
``cifar-10-batches-py`` folder, or a folder holding ``cifar10.npz`` (full), ``cifar-10-batches-py`` or
``cifar10_prefix.npz`` (subset), in that order; (2) ``<root>/cifar-10-batches-py`` with ``root = $FP_CACHE``
or ``~/.cache/fp_helpers/cifar10``; (3) only with ``download=True`` (and ``FP_OFFLINE`` unset), a download
into that root: from ``mirror`` / ``$FP_CIFAR_MIRROR`` (a base URL holding ``cifar-10-python.tar.gz``, md5
checked here before extraction), else by torchvision from the slow official host (md5 checked by torchvision).

Nothing found: ``FileNotFoundError`` naming all three. Corrupted or truncated files (an npz against the
sha256 of its ``manifest.json``, each torchvision batch file against the official md5 list), bad
arguments: ``ValueError`` naming the file and the expected checksum. ``FP_OFFLINE=1`` (the default when ``CI``
is set, so CI's notebook kernels never download; ``FP_OFFLINE=0`` allows it) turns a download into that
``FileNotFoundError``.
Images are float32 in [0, 1], NCHW; labels int64. ``Normalize`` goes inside the model, so attack radii
are in pixel space.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # per-channel mean of the 50,000 training images
CIFAR_STD = (0.2470, 0.2435, 0.2616)  # per-channel standard deviation of the same
OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
TAR_NAME = "cifar-10-python.tar.gz"
TAR_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
FULL_NPZ, PREFIX_NPZ = "cifar10.npz", "cifar10_prefix.npz"
SUBSET_MODES = ("balanced", "prefix")
PADDINGS = ("zeros", "reflect")
_VERIFIED: set[tuple[str, int, int]] = set()  # (path, size, mtime_ns) of files whose sha256 matched


@dataclass
class CifarData:
    """Train and test tensors (images float32 [N,3,32,32] in [0, 1], labels int64) and where they came from."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    source: str
    class_names: tuple[str, ...] = CLASS_NAMES
    is_subset: bool = False

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    @property
    def n_test(self) -> int:
        return len(self.y_test)

    def to(self, device: str | torch.device) -> CifarData:
        return replace(self, x_train=self.x_train.to(device), y_train=self.y_train.to(device),
                       x_test=self.x_test.to(device), y_test=self.y_test.to(device))

    def describe(self) -> str:
        """One line for a chapter: subset or not, the image counts, the source."""
        kind = "a subset of CIFAR-10" if self.is_subset else "CIFAR-10"
        return f"{kind}: {self.n_train:,} train / {self.n_test:,} test images ({self.source})"


def cache_root() -> Path:
    """Root of the torchvision folder and of downloads: ``$FP_CACHE``, else ``~/.cache/fp_helpers/cifar10``."""
    return Path(os.environ.get("FP_CACHE") or Path.home() / ".cache" / "fp_helpers" / "cifar10").expanduser()


def _digest(path: Path, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _check_file(path: Path, entry: dict) -> None:
    """Size and sha256 of ``path`` against its manifest entry; a match is remembered per (path, size, mtime)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _VERIFIED:
        return
    fix = f"re-copy {path.name} (with its manifest.json) from its source, or re-download it"
    want, sha = entry.get("bytes"), entry["sha256_file"]
    if want is not None and st.st_size != want:
        raise ValueError(f"{path} is truncated or corrupted: {st.st_size:,} bytes, manifest.json says "
                         f"{want:,} bytes with sha256 {sha}; {fix}")
    actual = _digest(path)
    if actual != sha:
        raise ValueError(f"{path} is corrupted: its sha256 checksum is {actual}, manifest.json expects {sha}; {fix}")
    _VERIFIED.add(key)


def _check_batches(folder: Path) -> None:
    """md5 of every file of a torchvision folder against torchvision's list; names the file and both sums."""
    from torchvision.datasets import CIFAR10

    entries = list(CIFAR10.train_list) + list(CIFAR10.test_list) + [[CIFAR10.meta["filename"], CIFAR10.meta["md5"]]]
    for name, md5 in entries:
        path = folder / name
        if not path.is_file():
            raise ValueError(f"{folder} is incomplete: {name} is missing (expected md5 {md5}); delete the folder and "
                             f"re-copy it, or re-download it with load_cifar10(download=True)")
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if key in _VERIFIED:
            continue
        actual = _digest(path, "md5")
        if actual != md5:
            raise ValueError(f"{folder} is incomplete or corrupted: {path.name} has md5 {actual}, expected {md5} "
                             f"(the official checksum); delete the folder and re-copy it, or re-download it with "
                             f"load_cifar10(download=True)")
        _VERIFIED.add(key)


def _tensors(x: np.ndarray, y: np.ndarray, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate uint8 images [N,32,32,3] (or [N,3,32,32]) and labels 0..9; return float NCHW in [0, 1], int64."""
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] not in ((32, 32, 3), (3, 32, 32)):
        raise ValueError(f"{where}: images must be uint8 [N,32,32,3] (or [N,3,32,32]), got {x.dtype} {list(x.shape)}")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or len(y) != len(x):
        raise ValueError(f"{where}: labels must be integers of shape [{len(x)}] (one per image), "
                         f"got {y.dtype} {list(y.shape)}")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise ValueError(f"{where}: labels must lie in 0..9, got {y.min()}..{y.max()}")
    t = torch.from_numpy(np.ascontiguousarray(x))
    if x.shape[-1] == 3:
        t = t.permute(0, 3, 1, 2)
    return t.contiguous().float().div_(255), torch.from_numpy(y.astype(np.int64))


def _read_npz(path: Path) -> CifarData:
    """Arrays ``x_train, y_train, x_test, y_test``; checked against ``manifest.json`` beside it when listed there."""
    manifest, mpath = None, path.parent / "manifest.json"
    if mpath.is_file():
        try:
            manifest = json.loads(mpath.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{mpath} is unreadable ({e}); re-copy it together with {path.name}") from None
    entry = (manifest or {}).get("files", {}).get(path.name)
    if entry is not None:
        _check_file(path, entry)
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in keys}
    except KeyError as e:
        raise ValueError(f"{path} lacks the array {e}; expected arrays {', '.join(keys)}") from None
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(f"{path} is unreadable: truncated or corrupted ({type(e).__name__}: {e}); "
                         f"re-copy or re-download it") from None
    for k, a in arrays.items():
        want = (entry or {}).get("arrays", {}).get(k)
        if want and (list(a.shape) != want["shape"] or str(a.dtype) != want["dtype"]):
            raise ValueError(f"{path}: array {k} is {a.dtype} {list(a.shape)} but manifest.json says "
                             f"{want['dtype']} {want['shape']}; the file is corrupted, re-copy it")
    is_subset = (len(arrays["y_train"]), len(arrays["y_test"])) != (50000, 10000)
    return CifarData(*_tensors(arrays["x_train"], arrays["y_train"], f"{path} (train)"),
                     *_tensors(arrays["x_test"], arrays["y_test"], f"{path} (test)"),
                     f"npz {'subset ' if is_subset else ''}at {path}",
                     tuple((manifest or {}).get("class_names", CLASS_NAMES)), is_subset)


def _read_folder(folder: Path) -> CifarData:
    """A torchvision ``cifar-10-batches-py`` folder; torchvision checks the md5 of every batch file."""
    from torchvision.datasets import CIFAR10

    _check_batches(folder)
    try:
        train, test = CIFAR10(folder.parent, train=True), CIFAR10(folder.parent, train=False)
    except (RuntimeError, OSError, EOFError) as e:
        raise ValueError(f"{folder} is incomplete or corrupted ({e}); delete it and re-copy it, or "
                         f"re-download it with load_cifar10(download=True)") from None
    return CifarData(*_tensors(train.data, np.asarray(train.targets), str(folder)),
                     *_tensors(test.data, np.asarray(test.targets), str(folder)),
                     f"torchvision folder {folder}", tuple(train.classes), False)


def _from_path(p: Path) -> CifarData | None:
    if p.is_file() and p.suffix == ".npz":
        return _read_npz(p)
    if p.name == FOLDER and p.is_dir():
        return _read_folder(p)
    for cand in (p / FULL_NPZ, p / FOLDER, p / PREFIX_NPZ):
        if cand.exists():
            return _read_folder(cand) if cand.name == FOLDER else _read_npz(cand)
    return None


def _download_mirror(root: Path, mirror: str, progress: bool) -> str:
    """Fetch ``<mirror>/cifar-10-python.tar.gz``, check its md5, extract; a failure leaves nothing behind."""
    from tqdm import tqdm

    url = f"{mirror.rstrip('/')}/{TAR_NAME}"
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:  # removed whatever happens
        part = Path(tmp) / TAR_NAME
        try:
            with open(part, "wb") as f, urllib.request.urlopen(url, timeout=60) as r:
                total = int(r.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=TAR_NAME, disable=not progress) as bar:
                    while block := r.read(1 << 20):
                        bar.update(f.write(block))
        except urllib.error.URLError as e:
            raise OSError(f"could not download {url} ({e.reason}); check that the mirror holds {TAR_NAME}") from e
        md5 = _digest(part, "md5")
        if md5 != TAR_MD5:
            raise ValueError(f"{url} has md5 {md5}, not the official {TAR_MD5}: the mirror's file is corrupted, "
                             f"truncated or not CIFAR-10; it was deleted and nothing was extracted")
        with tarfile.open(part, "r:gz") as tar:
            tar.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        os.replace(Path(tmp) / FOLDER, root / FOLDER)
    return url


def offline() -> bool:
    """Whether downloads are forbidden: ``FP_OFFLINE`` (1/0), else whenever ``CI`` is set."""
    value = os.environ.get("FP_OFFLINE", "").strip().lower()
    if value:
        return value not in ("0", "false", "no", "off")
    return bool(os.environ.get("CI"))


def load_cifar10(data_dir: str | os.PathLike | None = None, download: bool = False, mirror: str | None = None,
                 progress: bool | None = None) -> CifarData:
    """Load CIFAR-10 from the first option that has it (see the module docstring) as CPU tensors.

    ``mirror`` (else ``$FP_CIFAR_MIRROR``) is used only with ``download=True``; ``progress`` shows a download
    bar (default: on unless ``CI`` is set or ``FP_PROGRESS=0``).
    """
    if not isinstance(download, bool):
        raise ValueError(f"download must be True or False, got {download!r}")
    if progress is None:
        progress = not os.environ.get("CI") and os.environ.get("FP_PROGRESS", "1") != "0"
    given = data_dir if data_dir is not None else os.environ.get("FP_DATA_DIR") or None
    if given is not None and (data := _from_path(Path(given).expanduser().absolute())) is not None:
        return data
    root = cache_root()
    if (root / FOLDER).is_dir():
        return _read_folder(root / FOLDER)
    mirror = mirror or os.environ.get("FP_CIFAR_MIRROR") or None
    if download and offline():
        why = f"FP_OFFLINE={os.environ['FP_OFFLINE']}" if os.environ.get("FP_OFFLINE") else "CI is set (FP_OFFLINE unset)"
        raise FileNotFoundError(
            f"CIFAR-10 not found ({given if given is not None else 'FP_DATA_DIR not set'}; no {root / FOLDER}), and "
            f"downloads are disabled because {why}: point FP_DATA_DIR at a local copy, or set FP_OFFLINE=0 to "
            f"download it")
    if download:
        root.mkdir(parents=True, exist_ok=True)
        if mirror:
            url = _download_mirror(root, mirror, progress)
        else:
            from torchvision.datasets import CIFAR10

            CIFAR10(root, train=True, download=True)  # torchvision checks the archive's md5
            url = OFFICIAL_URL
        return replace(_read_folder(root / FOLDER), source=f"download from {url} into {root / FOLDER}")
    raise FileNotFoundError(
        "CIFAR-10 not found. The options, in the order tried:\n"
        f"  1. load_cifar10(data_dir=...) or $FP_DATA_DIR: an .npz file or a folder holding {FULL_NPZ}, "
        f"{FOLDER} or {PREFIX_NPZ} (+ manifest.json); looked at: {given if given is not None else 'not set'}\n"
        f"  2. a torchvision folder {root / FOLDER} (root: $FP_CACHE or ~/.cache/fp_helpers/cifar10): absent\n"
        f"  3. load_cifar10(download=True) downloads it there (md5-checked); the official host is slow, "
        f"so set mirror=... or $FP_CIFAR_MIRROR to a base URL holding {TAR_NAME}")


def _pick(x: torch.Tensor, y: torch.Tensor, n: int | None, mode: str, gen: torch.Generator, name: str):
    if n is None:
        return x, y
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= len(y):
        raise ValueError(f"{name} must be an int in 1..{len(y)} (the images available) or None, got {n!r}")
    if mode == "prefix":
        return x[:n], y[:n]
    y_cpu, parts = y.cpu(), []
    for c in range(10):
        want, pool = n // 10 + (c < n % 10), (y_cpu == c).nonzero().flatten()
        if want > len(pool):
            raise ValueError(f"{name}={n}: class {c} has only {len(pool)} images but a balanced subset needs "
                             f"{want}; lower {name} or use mode='prefix'")
        parts.append(pool[torch.randperm(len(pool), generator=gen)[:want]])
    idx = torch.cat(parts).sort().values.to(y.device)
    return x[idx], y[idx]


def subset(data: CifarData, n_train: int | None = None, n_test: int | None = None, seed: int = 0,
           mode: str = "balanced") -> CifarData:
    """Fewer images, e.g. for the quick profile; ``None`` keeps a split whole.

    ``mode="balanced"``: ``n // 10`` images of each class (the first ``n % 10`` classes one more), drawn at
    random with ``seed`` and kept in their original order. ``mode="prefix"``: the first ``n`` images.
    """
    if mode not in SUBSET_MODES:
        raise ValueError(f"unknown subset mode {mode!r}; allowed modes are {', '.join(SUBSET_MODES)}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    gen = torch.Generator().manual_seed(seed)
    x_tr, y_tr = _pick(data.x_train, data.y_train, n_train, mode, gen, "n_train")
    x_te, y_te = _pick(data.x_test, data.y_test, n_test, mode, gen, "n_test")
    smaller = len(y_tr) < data.n_train or len(y_te) < data.n_test
    how = f"{mode} subset" + (f", seed {seed}" if mode == "balanced" else "")
    return replace(data, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, is_subset=data.is_subset or smaller,
                   source=f"{data.source}; {how}" if smaller else data.source)


def augment(x: torch.Tensor, generator: torch.Generator | None = None, padding: str = "zeros",
            pad: int = 4) -> torch.Tensor:
    """Random crop (same size) of each image padded by ``pad`` pixels of zeros (or ``"reflect"``), then a
    horizontal flip with probability 1/2; batch [N,C,H,W] on any device, one gather, no PIL.

    The random draws come from ``generator`` (on its own device), so equal generator states give equal outputs.
    """
    if padding not in PADDINGS:
        raise ValueError(f"unknown padding {padding!r}; allowed paddings are {', '.join(PADDINGS)}")
    if x.ndim != 4:
        raise ValueError(f"augment expects a batch [N,C,H,W], got shape {list(x.shape)}")
    n, c, h, w = x.shape
    if not isinstance(pad, int) or isinstance(pad, bool) or not 0 <= pad < min(h, w):
        raise ValueError(f"pad must be an int in 0..{min(h, w) - 1}, got {pad!r}")
    gdev = generator.device if generator is not None else x.device
    shift = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=gdev).to(x.device)
    flip = (torch.rand(n, generator=generator, device=gdev) < 0.5).to(x.device)
    xp = F.pad(x, (pad,) * 4, mode="constant" if padding == "zeros" else "reflect")
    ar_h, ar_w = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    rows = shift[0, :, None] + ar_h  # [N,H]
    cols = shift[1, :, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)  # [N,W]; a flip reverses the crop
    i = torch.arange(n, device=x.device)[:, None, None, None]
    ch = torch.arange(c, device=x.device)[None, :, None, None]
    return xp[i, ch, rows[:, None, :, None], cols[:, None, None, :]]


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, as a model's first layer (inputs stay in [0, 1]); non-persistent buffers."""

    def __init__(self, mean: tuple[float, ...] = CIFAR_MEAN, std: tuple[float, ...] = CIFAR_STD):
        super().__init__()
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"mean and std need one entry per channel and std > 0, got mean={mean}, std={std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = True,
            generator: torch.Generator | None = None, drop_last: bool = False) -> Iterator[tuple[torch.Tensor, ...]]:
    """One epoch of ``(x, y)`` minibatches on the tensors' device, shuffled by ``generator`` if ``shuffle``."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    order = None
    if shuffle:
        gdev = generator.device if generator is not None else x.device
        order = torch.randperm(len(x), generator=generator, device=gdev).to(x.device)
    stop = len(x) - len(x) % batch_size if drop_last else len(x)

    def epoch():
        for s in range(0, stop, batch_size):
            idx = slice(s, s + batch_size) if order is None else order[s:s + batch_size]
            yield x[idx], y[idx]

    return epoch()
