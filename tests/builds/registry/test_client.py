"""builds/registry/client.py: which registries the farm speaks plain HTTP to."""

from __future__ import annotations

from builds.registry.client import RegistryAPI


def test_loopback_and_the_operators_listed_registries_are_plain_http(monkeypatch):
    monkeypatch.setenv("GENERATOR_PLAIN_HTTP_REGISTRIES", "10.0.0.5:5000, registry.lan:5000")
    assert RegistryAPI("localhost:5000").base == "http://localhost:5000/v2"
    assert RegistryAPI("127.0.0.1:5000").base == "http://127.0.0.1:5000/v2"
    assert RegistryAPI("10.0.0.5:5000").base == "http://10.0.0.5:5000/v2"
    assert RegistryAPI("registry.lan:5000").base == "http://registry.lan:5000/v2"
    assert RegistryAPI("10.0.0.5:5001").base == "https://10.0.0.5:5001/v2"  # another port: not listed
    monkeypatch.delenv("GENERATOR_PLAIN_HTTP_REGISTRIES")
    assert RegistryAPI("10.0.0.5:5000").base == "https://10.0.0.5:5000/v2"
