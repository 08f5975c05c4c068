"""Proxies from the environment (issue 15): what httpx's ``trust_env=True`` reads.

Every test passes its own environment mapping; ``os.environ`` is never touched.
"""

from __future__ import annotations

import pytest

from trio_pool import Proxy
from trio_pool._proxy_env import environment_proxy

P = "http://127.0.0.1:3128"


def test_nothing_set_means_direct() -> None:
    assert environment_proxy("https", "example.test", 443, {}) is None
    assert environment_proxy("http", "example.test", 80, {"HTTP_PROXY": ""}) is None


def test_scheme_variable_wins_over_all_proxy() -> None:
    env = {"HTTPS_PROXY": P, "ALL_PROXY": "http://127.0.0.1:9"}
    assert environment_proxy("https", "example.test", 443, env) == Proxy(P)
    assert environment_proxy("http", "example.test", 80, env) == Proxy("http://127.0.0.1:9")


def test_lower_case_first_and_an_empty_one_hides_upper_case() -> None:
    env = {"https_proxy": P, "HTTPS_PROXY": "http://127.0.0.1:9"}
    assert environment_proxy("https", "a.test", 443, env) == Proxy(P)
    env = {"https_proxy": "", "HTTPS_PROXY": "http://127.0.0.1:9"}
    assert environment_proxy("https", "a.test", 443, env) is None


def test_scheme_less_values_are_http_and_credentials_kept() -> None:
    env = {"HTTP_PROXY": "u:p%40@127.0.0.1:3128"}
    assert environment_proxy("http", "a.test", 80, env) == Proxy(P, auth=("u", "p@"))


def test_socks_from_all_proxy() -> None:
    env = {"ALL_PROXY": "socks5h://127.0.0.1:1080"}
    assert environment_proxy("https", "a.test", 443, env) == Proxy("socks5h://127.0.0.1:1080")


def test_httpoxy_cgi_guard() -> None:
    env = {"HTTP_PROXY": P, "REQUEST_METHOD": "GET"}
    assert environment_proxy("http", "a.test", 80, env) is None
    env["http_proxy"] = P  # a lower-case variable cannot come from a request header
    assert environment_proxy("http", "a.test", 80, env) == Proxy(P)


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "direct"),
    [
        ("*", "anything.test", 443, True),
        ("example.test", "example.test", 443, True),
        ("example.test", "api.example.test", 443, True),
        ("example.test", "badexample.test", 443, False),
        (".example.test", "example.test", 443, False),
        (".example.test", "api.example.test", 443, True),
        ("*.example.test", "api.example.test", 443, True),
        ("*.example.test", "example.test", 443, False),
        ("EXAMPLE.test", "Example.TEST.", 443, True),
        ("example.test:8443", "example.test", 8443, True),
        ("example.test:8443", "example.test", 443, False),
        ("localhost", "localhost", 443, True),
        ("localhost", "sub.localhost", 443, False),
        ("127.0.0.1", "127.0.0.1", 443, True),
        ("127.0.0.1", "127.0.0.10", 443, False),
        ("::1", "::1", 443, True),
        ("[::1]:8443", "::1", 8443, True),
        ("https://example.test", "example.test", 443, True),
        ("http://example.test", "example.test", 443, False),
        (" other.test , example.test ", "example.test", 443, True),
        (",,", "example.test", 443, False),
    ],
)
def test_no_proxy(no_proxy: str, host: str, port: int, direct: bool) -> None:
    env = {"HTTPS_PROXY": P, "NO_PROXY": no_proxy}
    proxy = environment_proxy("https", host, port, env)
    assert (proxy is None) == direct


def test_bad_values_name_the_variable() -> None:
    with pytest.raises(ValueError, match=r"^https_proxy: proxy URL must name a port"):
        environment_proxy("https", "a.test", 443, {"https_proxy": "http://proxy.test"})
    with pytest.raises(ValueError, match=r"^ALL_PROXY: proxy URL .*https:// proxies"):
        environment_proxy("http", "a.test", 80, {"ALL_PROXY": "https://127.0.0.1:3128"})
