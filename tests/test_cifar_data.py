import hashlib
import io
import json
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fp_helpers import cifar
from fp_helpers.cifar import (CIFAR_MEAN, CIFAR_STD, CLASS_NAMES, Normalize, augment, batches, load_cifar10,
                              subset)

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FP_DATA_DIR") or REPO.parent / "shared" / "data" / "cifar10")
PREFIX = DATA / "cifar10_prefix.npz"
needs_subset = pytest.mark.skipif(not (PREFIX.is_file() and (DATA / "cifar10_labels.npz").is_file()),
                                  reason=f"the genuine CIFAR-10 subset is absent: no {PREFIX} and cifar10_labels.npz "
                                         "(set FP_DATA_DIR to the folder holding them)")


@pytest.fixture(autouse=True)
def no_ambient_data(monkeypatch, tmp_path):
    """No test sees the caller's FP_DATA_DIR / FP_CACHE / FP_CIFAR_MIRROR unless it sets them itself."""
    monkeypatch.delenv("FP_DATA_DIR", raising=False)
    monkeypatch.delenv("FP_CIFAR_MIRROR", raising=False)
    monkeypatch.setenv("FP_CACHE", str(tmp_path / "empty-cache"))


@pytest.fixture(scope="module")
def prefix():
    if not PREFIX.is_file():
        pytest.skip(f"the genuine CIFAR-10 subset is absent: no {PREFIX}")
    return load_cifar10(PREFIX)


def tiny_npz(folder: Path, n_train=40, n_test=20, manifest=True, name="cifar10_prefix.npz", **override):
    """A small valid npz in the layout of the shared subset, with a manifest.json like the real one."""
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
                  y_train=np.arange(n_train) % 10, x_test=rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
                  y_test=np.arange(n_test) % 10)
    arrays.update(override)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    np.savez_compressed(path, **arrays)
    if manifest:
        data = path.read_bytes()
        entry = {"sha256_file": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                 "arrays": {k: {"dtype": str(a.dtype), "shape": list(a.shape)} for k, a in arrays.items()}}
        (folder / "manifest.json").write_text(json.dumps({"class_names": list(CLASS_NAMES), "files": {name: entry}}))
    return path


def fake_batches_folder(root: Path, monkeypatch, n=20):
    """A tiny torchvision cifar-10-batches-py folder; torchvision's md5 table is patched to accept it."""
    from torchvision.datasets import CIFAR10

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    md5 = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        obj = ({"label_names": list(CLASS_NAMES)} if name == "batches.meta" else
               {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(np.arange(n) % 10)})
        (folder / name).write_bytes(pickle.dumps(obj))
        md5[name] = hashlib.md5((folder / name).read_bytes()).hexdigest()
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names", "md5": md5["batches.meta"]})
    return folder


# ---------------------------------------------------------------- the genuine subset

@needs_subset
def test_genuine_subset_loads_in_official_order(prefix):
    d = prefix
    assert d.x_train.shape == (8380, 3, 32, 32) and d.x_test.shape == (1017, 3, 32, 32)
    assert (d.n_train, d.n_test) == (8380, 1017) and d.is_subset
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64 and d.y_test.dtype == torch.int64
    for x in (d.x_train, d.x_test):
        assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.99  # scaled by 255, not left at 0..255
    labels = np.load(DATA / "cifar10_labels.npz")
    # the train images are a prefix of each official batch (4000, 1017, 1017, 1329, 1017 images), so their labels
    # are the full label list at official_index_train, not its first 8,380 entries; the test set is a plain prefix
    index = np.load(PREFIX)["official_index_train"]
    batch_sizes = json.loads((DATA / "manifest.json").read_text())["files"][PREFIX.name]["counts"]
    expected = np.concatenate([(b - 1) * 10000 + np.arange(batch_sizes[f"data_batch_{b}"]) for b in range(1, 6)])
    assert np.array_equal(index, expected)
    assert torch.equal(d.y_train, torch.from_numpy(labels["y_train"][index]))
    assert torch.equal(d.y_test, torch.from_numpy(labels["y_test"][:1017]))
    assert set(d.y_train.tolist()) == set(range(10)) and set(d.y_test.tolist()) == set(range(10))
    assert d.class_names == CLASS_NAMES and "subset" in d.source and str(PREFIX) in d.source
    assert "8,380 train / 1,017 test" in d.describe()
    raw = np.load(PREFIX)["x_train"][:2]  # HWC uint8 -> CHW float
    assert torch.equal(d.x_train[:2], torch.from_numpy(raw).permute(0, 3, 1, 2).float() / 255)


@needs_subset
def test_env_var_and_data_dir_find_the_folder(monkeypatch, prefix):
    monkeypatch.setenv("FP_DATA_DIR", str(DATA))
    from_env = load_cifar10()
    assert str(DATA) in from_env.source
    if not (DATA / "cifar10.npz").exists():  # the folder's full set would win over the subset
        assert torch.equal(from_env.y_test, prefix.y_test)
        assert load_cifar10(DATA).source == from_env.source


# ---------------------------------------------------------------- integrity

@needs_subset
def test_corrupted_copy_is_refused(tmp_path):
    shutil.copyfile(PREFIX, tmp_path / PREFIX.name)
    shutil.copyfile(DATA / "manifest.json", tmp_path / "manifest.json")
    with open(tmp_path / PREFIX.name, "r+b") as f:
        f.seek(PREFIX.stat().st_size // 2)
        block = f.read(16)
        f.seek(-16, 1)
        f.write(bytes(b ^ 0xFF for b in block))
    with pytest.raises(ValueError, match=r"(?i)corrupt.*checksum|checksum.*corrupt") as e:
        load_cifar10(tmp_path)
    assert PREFIX.name in str(e.value) and "re-" in str(e.value)


@needs_subset
def test_truncated_copy_is_refused(tmp_path):
    data = PREFIX.read_bytes()[:PREFIX.stat().st_size // 3]
    (tmp_path / PREFIX.name).write_bytes(data)
    shutil.copyfile(DATA / "manifest.json", tmp_path / "manifest.json")
    with pytest.raises(ValueError, match="truncated"):
        load_cifar10(tmp_path)
    (tmp_path / "manifest.json").unlink()  # without a manifest the zip itself is found unreadable
    with pytest.raises(ValueError, match="truncated or corrupted"):
        load_cifar10(tmp_path)


def test_verification_is_cached_per_path_size_and_mtime(tmp_path, monkeypatch):
    path = tiny_npz(tmp_path)
    assert load_cifar10(tmp_path).n_train == 40
    monkeypatch.setattr(cifar, "_digest", lambda *a, **k: pytest.fail("hashed again"))
    assert load_cifar10(tmp_path).n_test == 20
    os.utime(path, ns=(1, 1))  # a changed file (mtime) is hashed again
    with pytest.raises(pytest.fail.Exception, match="hashed again"):
        load_cifar10(tmp_path)


def test_manifest_shapes_are_checked(tmp_path):
    tiny_npz(tmp_path)
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["files"]["cifar10_prefix.npz"]["arrays"]["x_test"]["shape"] = [21, 32, 32, 3]
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match=r"x_test .*manifest.json says"):
        load_cifar10(tmp_path)


@pytest.mark.parametrize("override, message", [
    (dict(y_train=np.full(40, 10)), "0..9"),
    (dict(y_test=np.arange(19) % 10), "one per image"),
    (dict(x_train=np.zeros((40, 32, 32, 3), np.float32)), "uint8"),
    (dict(x_test=np.zeros((20, 28, 28, 3), np.uint8)), r"\[N,32,32,3\]"),
])
def test_npz_without_manifest_is_still_validated(tmp_path, override, message):
    tiny_npz(tmp_path, manifest=False, **override)
    with pytest.raises(ValueError, match=message):
        load_cifar10(tmp_path)


def test_valid_npz_without_manifest_loads(tmp_path):
    d = load_cifar10(tiny_npz(tmp_path, manifest=False, name="cifar10.npz"))
    assert d.x_train.shape == (40, 3, 32, 32) and d.is_subset and d.source.startswith("npz subset at")


# ---------------------------------------------------------------- the other options

def test_no_data_anywhere_names_every_option(tmp_path, monkeypatch):
    empty, cache = tmp_path / "empty", tmp_path / "cache"
    empty.mkdir()
    monkeypatch.setenv("FP_CACHE", str(cache))
    for kwargs in (dict(data_dir=empty), dict()):
        monkeypatch.setenv("FP_DATA_DIR", str(tmp_path / "does-not-exist"))
        with pytest.raises(FileNotFoundError) as e:
            load_cifar10(**kwargs, download=False)
        msg = str(e.value)
        for needle in ("FP_DATA_DIR", "data_dir", str(cache / "cifar-10-batches-py"), "FP_CACHE",
                       "download=True", "FP_CIFAR_MIRROR", "mirror"):
            assert needle in msg, (needle, msg)
    assert not cache.exists()  # nothing is created without download=True


def test_torchvision_folder_from_cache_and_from_data_dir(tmp_path, monkeypatch):
    folder = fake_batches_folder(tmp_path / "cache", monkeypatch)
    monkeypatch.setenv("FP_CACHE", str(tmp_path / "cache"))
    d = load_cifar10()
    assert (d.n_train, d.n_test) == (100, 20) and not d.is_subset and d.class_names == CLASS_NAMES
    assert d.source == f"torchvision folder {folder}"
    assert torch.equal(load_cifar10(tmp_path / "cache").x_train, d.x_train)  # folder holding it, via data_dir
    raw = pickle.loads((folder / "data_batch_1").read_bytes())["data"][0].reshape(3, 32, 32)
    assert torch.equal(d.x_train[0], torch.from_numpy(raw).float() / 255)
    (folder / "test_batch").write_bytes(b"broken")
    with pytest.raises(ValueError, match="incomplete or corrupted"):
        load_cifar10()


def fake_archive(mirror: Path, monkeypatch) -> Path:
    """A small cifar-10-python.tar.gz (wrong md5 for the official check) in a local folder served as file://."""
    src = fake_batches_folder(mirror / "src", monkeypatch)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    (mirror / "cifar-10-python.tar.gz").write_bytes(buf.getvalue())
    shutil.rmtree(src.parent)
    return mirror / "cifar-10-python.tar.gz"


def test_mirror_with_wrong_md5_is_rejected_and_leaves_nothing(tmp_path, monkeypatch):
    fake_archive(tmp_path / "mirror", monkeypatch)
    cache = tmp_path / "cache"
    monkeypatch.setenv("FP_CACHE", str(cache))
    monkeypatch.setenv("FP_CIFAR_MIRROR", (tmp_path / "mirror").as_uri())
    with pytest.raises(FileNotFoundError):  # the mirror alone does not download
        load_cifar10()
    with pytest.raises(ValueError, match=f"md5 .* not the official {cifar.TAR_MD5}.*nothing was extracted"):
        load_cifar10(download=True, progress=False)
    assert list(cache.iterdir()) == []  # no archive, no .part, no half-extracted folder
    with pytest.raises(OSError, match="could not download .*/nowhere/cifar-10-python.tar.gz"):
        load_cifar10(download=True, mirror=(tmp_path / "nowhere").as_uri(), progress=False)
    assert list(cache.iterdir()) == []


def test_mirror_download_extracts_when_md5_matches(tmp_path, monkeypatch):
    archive = fake_archive(tmp_path / "mirror", monkeypatch)
    monkeypatch.setattr(cifar, "TAR_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    monkeypatch.setenv("FP_CACHE", str(tmp_path / "cache"))
    d = load_cifar10(download=True, mirror=(tmp_path / "mirror").as_uri() + "/", progress=False)
    assert d.n_train == 100 and d.source.startswith("download from file:")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["cifar-10-batches-py"]
    assert load_cifar10().source.startswith("torchvision folder")  # found locally from now on


def test_official_download_goes_through_torchvision(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    calls = []
    monkeypatch.setattr(CIFAR10, "download", lambda self: calls.append(self.root) or fake_batches_folder(
        Path(self.root), monkeypatch))  # stands in for the network; torchvision's md5 check is the real one
    monkeypatch.setenv("FP_CACHE", str(tmp_path / "cache"))
    d = load_cifar10(download=True, progress=False)
    assert [str(r) for r in calls] == [str(tmp_path / "cache")]
    assert d.source.startswith(f"download from {cifar.OFFICIAL_URL}")


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="download must be True or False, got 'yes'"):
        load_cifar10(download="yes")


# ---------------------------------------------------------------- subsets

def small_data(n_train=200, n_test=50):
    g = torch.Generator().manual_seed(0)
    return cifar.CifarData(torch.rand(n_train, 3, 32, 32, generator=g), torch.arange(n_train) % 10,
                           torch.rand(n_test, 3, 32, 32, generator=g), torch.arange(n_test) % 10, "test")


def test_balanced_subset_is_balanced_ordered_and_seeded():
    d = small_data()
    s = subset(d, n_train=45, n_test=20, seed=1)
    assert s.y_train.bincount().tolist() == [5] * 5 + [4] * 5 and s.y_test.bincount().tolist() == [2] * 10
    assert s.is_subset and "balanced subset, seed 1" in s.source and (s.n_train, s.n_test) == (45, 20)
    rows = [(d.x_train == x).all(dim=(1, 2, 3)).nonzero().item() for x in s.x_train]
    assert rows == sorted(rows) and torch.equal(d.y_train[rows], s.y_train)  # genuine rows, original order
    assert torch.equal(subset(d, 45, seed=1).x_train, s.x_train)
    assert not torch.equal(subset(d, 45, seed=2).x_train, s.x_train)
    assert subset(d, n_test=20).n_train == 200  # None keeps a split whole


def test_prefix_subset_and_bad_arguments():
    d = small_data()
    s = subset(d, 30, 7, mode="prefix")
    assert torch.equal(s.x_train, d.x_train[:30]) and torch.equal(s.y_test, d.y_test[:7])
    with pytest.raises(ValueError, match=r"n_train must be an int in 1..200 .* got -5"):
        subset(d, n_train=-5)
    with pytest.raises(ValueError, match=r"n_test must be an int in 1..50 .* got 51"):
        subset(d, n_test=51)
    with pytest.raises(ValueError, match="unknown subset mode 'random'; allowed modes are balanced, prefix"):
        subset(d, 10, mode="random")
    scarce = cifar.CifarData(d.x_train, torch.cat([torch.zeros(5, dtype=torch.long), torch.arange(195) % 9 + 1]),
                             d.x_test, d.y_test, "scarce class 0")
    with pytest.raises(ValueError, match="class 0 has only 5 images but a balanced subset needs 6"):
        subset(scarce, n_train=60)
    assert subset(scarce, n_train=60, mode="prefix").n_train == 60


# ---------------------------------------------------------------- augmentation, normalisation, batches

def test_augment_is_a_shifted_and_maybe_flipped_crop():
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = augment(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype and out.min() >= 0 and out.max() <= 1
    padded = torch.nn.functional.pad(x, (4,) * 4)
    for i in range(len(x)):  # each output is one of the 81 crops of the zero-padded image, or its mirror
        crops = [c for dy in range(9) for dx in range(9) for c in
                 (padded[i, :, dy:dy + 32, dx:dx + 32], padded[i, :, dy:dy + 32, dx:dx + 32].flip(-1))]
        assert sum(torch.equal(out[i], c) for c in crops) >= 1
    many = augment(x.repeat(50, 1, 1, 1), torch.Generator().manual_seed(2))
    assert (many != x.repeat(50, 1, 1, 1)).flatten(1).any(1).float().mean() > 0.9  # crops do shift the content


def test_augment_is_deterministic_and_flips_about_half():
    x = torch.rand(1000, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a = augment(x, torch.Generator().manual_seed(5), padding="reflect")
    assert torch.equal(a, augment(x, torch.Generator().manual_seed(5), padding="reflect"))
    assert not torch.equal(a, augment(x, torch.Generator().manual_seed(6), padding="reflect"))
    flips = augment(x, torch.Generator().manual_seed(3), pad=0)
    flipped = (flips == x.flip(-1)).flatten(1).all(1)
    assert ((flips == x).flatten(1).all(1) | flipped).all()
    assert 420 < flipped.sum() < 580


def test_augment_keeps_a_constant_image_valid_and_checks_arguments():
    x = torch.full((8, 3, 32, 32), 0.5)
    assert torch.equal(augment(x, torch.Generator().manual_seed(0), padding="reflect"), x)
    z = augment(x, torch.Generator().manual_seed(0))  # zero padding: only 0 or the image value appear
    assert set(z.unique().tolist()) <= {0.0, 0.5}
    with pytest.raises(ValueError, match="unknown padding 'edge'; allowed paddings are zeros, reflect"):
        augment(x, padding="edge")
    with pytest.raises(ValueError, match=r"pad must be an int in 0..31, got -1"):
        augment(x, pad=-1)
    with pytest.raises(ValueError, match=r"batch \[N,C,H,W\]"):
        augment(x[0])


def test_normalize_is_per_channel():
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    norm = Normalize()
    want = torch.stack([(x[:, c] - CIFAR_MEAN[c]) / CIFAR_STD[c] for c in range(3)], dim=1)
    assert torch.allclose(norm(x), want, atol=1e-6)
    assert set(dict(norm.named_buffers())) == {"mean", "std"}  # moves with .to(device)
    with pytest.raises(ValueError, match="std > 0"):
        Normalize(std=(0.2, 0.0, 0.2))


def test_batches_cover_every_example_once():
    x, y = torch.arange(23.0)[:, None], torch.arange(23)
    got = list(batches(x, y, 5, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [len(b[1]) for b in got] == [5, 5, 5, 5, 3]
    seen = torch.cat([b[1] for b in got])
    assert sorted(seen.tolist()) == list(range(23)) and seen.tolist() != list(range(23))
    assert all(torch.equal(bx[:, 0].long(), by) for bx, by in got)
    again = torch.cat([b[1] for b in batches(x, y, 5, True, torch.Generator().manual_seed(0))])
    assert torch.equal(seen, again)
    assert torch.equal(torch.cat([b[1] for b in batches(x, y, 5, shuffle=False)]), y)
    assert [len(b[1]) for b in batches(x, y, 5, False, drop_last=True)] == [5] * 4
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        batches(x, y, 0)
