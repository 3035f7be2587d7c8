"""A delivery connects to the address the SSRF check vetted, not to whatever its host name
resolves to by then: the host's name stays in the Host header and, for https, in the TLS
server name that the certificate is checked against. Pure functions: no traffic leaves."""

from __future__ import annotations

import pytest

from calctra_agent.server_stub._webhooks import UnsafeTarget, check_target, pin


def test_check_returns_the_vetted_public_address() -> None:
    assert check_target("https://93.184.216.34/hook", allow_private=False) == "93.184.216.34"


def test_check_refuses_private_addresses_and_pins_nothing_when_they_are_allowed() -> None:
    with pytest.raises(UnsafeTarget, match="loopback, private or link-local"):
        check_target("http://10.1.2.3/hook", allow_private=False)
    assert check_target("http://127.0.0.1:9/hook", allow_private=True) is None


def test_https_delivery_goes_to_the_address_with_the_hosts_name_for_tls() -> None:
    target = pin("https://hooks.example.com/calctra?x=1", "93.184.216.34")

    assert target.url == "https://93.184.216.34/calctra?x=1"
    assert target.headers == {"host": "hooks.example.com"}
    assert target.extensions == {"sni_hostname": "hooks.example.com"}


def test_http_delivery_keeps_its_port_in_the_url_and_the_host_header() -> None:
    target = pin("http://hooks.example.com:8443/in", "2606:2800:220:1::1")

    assert target.url == "http://[2606:2800:220:1::1]:8443/in"
    assert target.headers == {"host": "hooks.example.com:8443"}
    assert target.extensions == {}


def test_unpinned_delivery_is_sent_as_registered() -> None:
    target = pin("http://127.0.0.1:9000/hook", None)

    assert (target.url, target.headers, target.extensions) == (
        "http://127.0.0.1:9000/hook",
        {},
        {},
    )
