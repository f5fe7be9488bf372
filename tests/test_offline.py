"""The offline guarantee: no test reaches the network, no download without consent, safe checkpoint loading."""

import ast
import json
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from fp_helpers.cifar import load_cifar10

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("connect", [
    lambda: socket.create_connection(("93.184.216.34", 80), timeout=2),  # an external IP
    lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).connect(("8.8.8.8", 53)),
    lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM).connect_ex(("2001:4860:4860::8888", 53)),
    lambda: socket.getaddrinfo("www.cs.toronto.edu", 443),  # DNS is network access too
], ids=["create_connection", "connect", "connect_ex_ipv6", "dns"])
def test_the_guard_blocks_every_way_out(connect):
    with pytest.raises(OSError, match="network access is blocked during the tests"):
        connect()


def test_urllib_download_fails_fast_and_clearly():
    with pytest.raises(urllib.error.URLError, match="network access is blocked"):
        urllib.request.urlopen("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", timeout=2)


def test_loopback_still_works():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    t = threading.Thread(target=lambda: server.accept()[0].sendall(b"ok"), daemon=True)
    t.start()
    with socket.create_connection(("localhost", port), timeout=5) as c:
        assert c.recv(2) == b"ok"
    server.close()


def test_fp_offline_refuses_downloads_before_touching_anything(tmp_path, monkeypatch):
    """nbval kernels are other processes, out of the guard's reach: there FP_OFFLINE=1 stops any download."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FP_CACHE", str(cache))
    monkeypatch.delenv("FP_DATA_DIR", raising=False)
    monkeypatch.setenv("FP_CIFAR_MIRROR", "https://mirror.example.org/cifar")
    monkeypatch.setenv("FP_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="downloads are disabled because FP_OFFLINE=1"):
        load_cifar10(download=True, progress=False)
    monkeypatch.delenv("FP_OFFLINE")
    monkeypatch.setenv("CI", "1")  # CI alone implies offline (make test's nbval sets CI=1)
    with pytest.raises(FileNotFoundError, match="downloads are disabled because CI is set"):
        load_cifar10(download=True, progress=False)
    assert not cache.exists()


def _torch_load_calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
            yield node


def _sources():
    for path in sorted((REPO / "fp_helpers").glob("*.py")) + sorted((REPO / "scripts").glob("*.py")):
        yield str(path.relative_to(REPO)), path.read_text()
    for nb in sorted((REPO / "book").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        code = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
        yield str(nb.relative_to(REPO)), code


def test_every_torch_load_is_weights_only():
    bad, seen = [], 0
    for name, src in _sources():
        for call in _torch_load_calls(ast.parse(src)):
            seen += 1
            kw = {k.arg: k.value for k in call.keywords}
            if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                bad.append(f"{name}:{call.lineno}")
    assert seen >= 3  # the scan does find the loads
    assert not bad, f"torch.load without weights_only=True at {bad}"
