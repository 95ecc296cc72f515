"""The URL policy's rules one by one: hosts and ports, wildcards, schemes, and which addresses are private."""

from __future__ import annotations

import pytest

from adapters.url_policy import UrlPolicy, is_public

CANVAS = {
    "platform": "canvas",
    "issuer": "https://canvas.instructure.com",
    "auth_url": "https://sso.canvaslms.com/api/lti/authorize_redirect",
    "token_url": "https://sso.canvaslms.com/login/oauth2/token",
    "jwks_url": "https://sso.canvaslms.com/api/lti/security/jwks",
}


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "224.0.0.1",  # noqa: S104
     "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "240.0.0.1", "255.255.255.255"],
)  # fmt: skip
def test_private_loopback_link_local_multicast_and_reserved_addresses_are_not_public(address: str) -> None:
    assert not is_public(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "151.101.1.69", "2606:4700:4700::1111"])
def test_global_unicast_addresses_are_public(address: str) -> None:
    assert is_public(address)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://school.instructure.com/api/lti/courses/1/line_items", True),  # the preset's school domains
        ("https://sso.canvaslms.com/login/oauth2/token", True),
        ("https://sso.canvaslms.com:8443/x", False),  # a registered host, another port
        ("https://instructure.com.evil.example/x", False),
        ("https://evilinstructure.com/x", False),
        ("https://canvas.instructure.com@evil.example/x", False),  # userinfo: the host is evil.example
        ("https://evil.example/x?u=https://canvas.instructure.com", False),
        ("http://school.instructure.com/x", False),  # not https
        ("javascript:alert(1)//canvas.instructure.com", False),
        ("ftp://canvas.instructure.com/x", False),
        ("not a url", False),
    ],
)
def test_canvas_urls_are_bound_to_its_hosts(url: str, allowed: bool) -> None:
    # Without DNS: only the host, port and scheme rules (the launch-time check).
    assert (UrlPolicy.for_connection(CANVAS).refusal(url, resolve_dns=False) is None) is allowed


def test_allowed_hosts_take_a_port_and_wildcards_match_subdomains_only() -> None:
    policy = UrlPolicy.for_connection({"allowed_hosts": ["lms.example.edu:8443", "*.files.example.edu"]})
    assert policy.host_allowed("lms.example.edu", 8443)
    assert not policy.host_allowed("lms.example.edu", 443)
    assert policy.host_allowed("a.files.example.edu", 443)
    assert not policy.host_allowed("files.example.edu", 443)


def test_a_host_resolving_to_loopback_is_refused_unless_the_connection_allows_it() -> None:
    settings = {"allowed_hosts": ["localhost"]}
    refused = UrlPolicy.for_connection(settings).refusal("https://localhost/x")
    assert refused is not None and "private, loopback or link-local" in refused
    allowed = UrlPolicy.for_connection({**settings, "allow_private_addresses": True})
    assert allowed.refusal("https://localhost/x") is None
    assert allowed.refusal("http://localhost/x") is None, "plain http to a private address, with the switch"
    assert allowed.refusal("http://127.0.0.1/x") is not None, "the host name is what is allowed, not the address"


def test_the_switch_never_allows_plain_http_to_a_public_address() -> None:
    policy = UrlPolicy.for_connection({"allowed_hosts": ["8.8.8.8"], "allow_private_addresses": True})
    refusal = policy.refusal("http://8.8.8.8/x")
    assert refusal is not None and "without https" in refusal
    assert policy.refusal("https://8.8.8.8/x") is None


def test_origins_for_csp_name_the_registered_and_allowed_hosts() -> None:
    origins = UrlPolicy.for_connection({**CANVAS, "allowed_hosts": ["canvas.school.edu"]}).origins()
    assert origins == [
        "https://*.instructure.com",
        "https://canvas.instructure.com",
        "https://canvas.school.edu",
        "https://sso.canvaslms.com",
    ]


def test_only_what_settings_could_allow_waits_for_the_operator() -> None:
    from adapters.base import AwaitingConfiguration
    from adapters.url_policy import UrlAwaitingApproval, UrlRefused

    policy = UrlPolicy.for_connection({"issuer": "https://lms.example.edu"})
    for url in ("https://other.example/x", "https://10.0.0.5/x"):
        with pytest.raises(UrlAwaitingApproval):
            UrlPolicy.for_connection({**({"allowed_hosts": ["10.0.0.5"]} if "10." in url else {})}).check(url)
    with pytest.raises(UrlRefused):
        policy.check("javascript:alert(1)")
    with pytest.raises(UrlRefused):
        UrlPolicy.for_connection({"allowed_hosts": ["8.8.8.8"], "allow_private_addresses": True}).check(
            "http://8.8.8.8/x"
        )
    assert issubclass(UrlAwaitingApproval, AwaitingConfiguration) and not issubclass(UrlRefused, AwaitingConfiguration)
