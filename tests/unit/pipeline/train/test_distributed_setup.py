"""Joining a process group: an address that cannot resolve is refused up front, not after a 30-minute hang."""

from __future__ import annotations

import socket

import pytest
import torch.distributed as dist

from elfkit.errors import DistributedSetupError
from elfkit.pipeline.train import distributed


def _unresolvable(host: str, *args, **kwargs):
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def test_an_unresolvable_master_addr_is_named_with_the_fix(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "ci-host-not-in-etc-hosts")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setattr(socket, "getaddrinfo", _unresolvable)
    with pytest.raises(DistributedSetupError) as err:
        distributed.setup("cpu")
    msg = str(err.value)
    assert "MASTER_ADDR='ci-host-not-in-etc-hosts' does not resolve" in msg
    assert "--local-addr 127.0.0.1" in msg and "127.0.0.1 on one machine" in msg
    assert not dist.is_initialized()


def test_a_resolvable_or_absent_master_addr_passes(monkeypatch) -> None:
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    distributed.check_master_addr()
    monkeypatch.delenv("MASTER_ADDR")
    monkeypatch.setattr(socket, "getaddrinfo", _unresolvable)   # not consulted without an address
    distributed.check_master_addr()


def test_one_process_never_looks_at_the_address(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "ci-host-not-in-etc-hosts")
    monkeypatch.setattr(socket, "getaddrinfo", _unresolvable)
    info = distributed.setup("cpu")
    assert not info.distributed and not info.created_group
