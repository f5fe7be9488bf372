import atexit
import ipaddress
import os
import shutil
import socket
import tempfile

import pytest
import torch

os.environ.setdefault("FP_PROGRESS", "0")
torch.set_num_threads(min(2, torch.get_num_threads()))
# Run checkpoints (fp_helpers.checkpoints) of every test go to a fresh folder, never to ~/.cache: a test
# never resumes from a run of an earlier session. Subprocesses inherit it.
os.environ["FP_CHECKPOINT_DIR"] = tempfile.mkdtemp(prefix="fp-test-checkpoints-")
atexit.register(shutil.rmtree, os.environ["FP_CHECKPOINT_DIR"], True)
# The download tests use local file:// mirrors and a stand-in for torchvision; the socket guard below keeps
# them offline. FP_OFFLINE (default on under CI) guards the notebook kernels, which this guard cannot reach.
os.environ["FP_OFFLINE"] = "0"


# ---------------------------------------------------------------------------------------------- offline guard
# The tests run without network: any connection (or DNS lookup) that would leave this machine raises
# NetworkBlockedError at once, so a test that needs the internet fails loudly here instead of hanging or
# passing only where a network happens to exist. Loopback (local servers) and Unix sockets stay allowed.
# tests/test_offline.py proves the guard works.

class NetworkBlockedError(ConnectionRefusedError):
    pass


_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def _is_local(host) -> bool:
    if host is None or host in ("", b""):
        return True
    host = host.decode() if isinstance(host, bytes) else str(host)
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _is_ip_literal(host) -> bool:
    try:
        ipaddress.ip_address(str(host).split("%")[0])
        return True
    except ValueError:
        return False


def _blocked(what: str, address) -> NetworkBlockedError:
    return NetworkBlockedError(f"network access is blocked during the tests ({what} {address!r}); "
                               "only loopback addresses may be used")


@pytest.fixture(scope="session", autouse=True)
def no_network():
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo, real_create_connection = socket.getaddrinfo, socket.create_connection

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
            raise _blocked("connect to", address)
        return real_connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
            raise _blocked("connect to", address)
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kw):  # a DNS lookup of a remote name is network access too
        if not (_is_local(host) or _is_ip_literal(host)):
            raise _blocked("DNS lookup of", host)
        return real_getaddrinfo(host, *args, **kw)

    def create_connection(address, *args, **kw):
        if not _is_local(address[0]):
            raise _blocked("connection to", address)
        return real_create_connection(address, *args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", connect)
        mp.setattr(socket.socket, "connect_ex", connect_ex)
        mp.setattr(socket, "getaddrinfo", getaddrinfo)
        mp.setattr(socket, "create_connection", create_connection)
        yield


@pytest.fixture(scope="session")
def quick_run():
    """One quick-profile synthetic experiment shared by the behavioural tests."""
    from fp_helpers.experiments import run_synthetic, synthetic_config

    return run_synthetic(synthetic_config("quick"), device="cpu", progress=False)
