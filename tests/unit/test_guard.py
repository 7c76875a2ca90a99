"""The keyless Host list and the connection cap's fit to the open-file limit."""

from __future__ import annotations

import resource

import pytest

from ia_continu.api.guard import _hostname, allowed_hosts_for
from ia_continu.api.server import effective_max_connections


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:9000", "127.0.0.1"),
        ("LOCALHOST", "localhost"),
        ("[::1]:9000", "::1"),
        ("::1", "::1"),
        ("api:9000", "api"),
        ("attacker.example", "attacker.example"),
    ],
)
def test_hostname_drops_the_port(header: str, name: str) -> None:
    assert _hostname(header) == name


def test_allowed_hosts_default_to_loopback_and_the_bound_address() -> None:
    names, any_host, ip_literals = allowed_hosts_for("192.168.1.5", "")
    assert names == {"localhost", "127.0.0.1", "::1", "192.168.1.5"}
    assert not any_host and not ip_literals
    names, any_host, ip_literals = allowed_hosts_for("0.0.0.0", " Api , ia.internal ")
    assert {"api", "ia.internal"} <= names and "0.0.0.0" not in names
    assert ip_literals and not any_host
    assert allowed_hosts_for("127.0.0.1", "*")[1]


def test_connection_cap_fits_the_open_file_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert effective_max_connections(10) == min(10, soft - 64)
    if soft != resource.RLIM_INFINITY:
        assert effective_max_connections(10**9) == soft - 64
