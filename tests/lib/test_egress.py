"""The egress policy as data (lib/egress.py) and the nftables rules made of it
(scripts/sandbox.py). The rules at work are tested on real daemons in
tests/farm/test_containment.py."""

from __future__ import annotations

import ipaddress
import subprocess

import pytest

from lib.egress import EgressConfigError, explain, parse_destinations, parse_networks, refusal_reason
from scripts import sandbox


def test_destinations_are_addresses_networks_and_ports():
    allowed = parse_destinations(["localhost:5000", "10.1.2.3:3128", " 10.9.0.0/16 ", "[fd00::5]:443", ""])
    assert [str(d) for d in allowed] == ["127.0.0.1:5000", "10.1.2.3:3128", "10.9.0.0/16", "[fd00::5]:443"]
    assert [d.is_loopback for d in allowed] == [True, False, False, False]


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("mirror.example.com:80", "not a host name"),
        ("127.0.0.1", "one address and a port"),
        ("127.0.0.0/8:80", "one address and a port"),
        ("10.0.0.1:70000", "from 1 to 65535"),
        ("10.0.0.1:http", "is not ADDRESS"),
    ],
)
def test_a_destination_the_kernel_cannot_hold_is_refused(entry, reason):
    with pytest.raises(EgressConfigError, match=reason):
        parse_destinations([entry])


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("10.215.0.1", "private"),
        ("172.17.0.1", "private"),
        ("192.168.1.10", "private"),
        ("100.64.0.1", "private"),
        ("fd00::1", "private"),
        ("93.184.216.34", None),
        ("2606:2800:220:1::1", None),
    ],
)
def test_refusal_reasons_name_the_kind_of_address(address, refused):
    reason = refusal_reason(address)
    assert (reason is None) if refused is None else (refused in reason)


def test_a_daemons_error_is_explained_when_it_names_a_refused_address():
    message = 'ADD failed: Get "http://127.0.0.1:6379/": dial tcp 127.0.0.1:6379: connect: connection refused'
    assert explain(message).startswith("127.0.0.1 is a loopback address")
    assert "egress policy" in explain("dial tcp 169.254.169.254:80: connect: no route to host")
    assert explain("dial tcp 93.184.216.34:443: i/o timeout") is None
    assert explain("the command returned a non-zero code: 1") is None


def test_the_rules_refuse_every_range_after_the_operators_destinations():
    policy = sandbox.Policy(
        table="gentest",
        prefix="gvt",
        allow=parse_destinations(["127.0.0.1:5000", "10.1.2.3:3128", "10.9.0.0/16"]),
        deny=parse_networks(["203.0.114.0/24"]),
    )
    rules = sandbox.render_rules(policy, dns_servers=("10.255.0.2",))
    forward = rules.split("chain forward")[1].split("chain postrouting")[0]
    lines = [line.strip() for line in forward.splitlines() if line.strip().startswith("iifname")]
    first_reject = next(i for i, line in enumerate(lines) if "reject" in line)
    accepted = lines[:first_reject]
    assert 'iifname "gvt*" ip daddr 10.1.2.3/32 tcp dport 3128 accept' in accepted
    assert 'iifname "gvt*" ip daddr 10.9.0.0/16 accept' in accepted
    assert any("10.255.0.2" in line and "dport 53" in line for line in accepted)
    assert not any("127.0.0.1" in line for line in lines)  # relayed, never routed
    refused = {line.split("daddr ")[1].split()[0] for line in lines[first_reject:]}
    for network in ["127.0.0.0/8", "169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fe80::/10"]:
        assert network in refused
    assert "203.0.114.0/24" in refused
    assert all("reject" in line for line in lines[first_reject:])
    host = rules.split("chain input")[1].split("chain forward")[0]
    assert host.strip().splitlines()[-3].strip() == 'iifname "gvt*" meta l4proto tcp reject with tcp reset'


def test_nft_accepts_the_rules():
    policy = sandbox.Policy(table="gencheck", prefix="gvc", allow=parse_destinations(["10.1.2.3:3128"]))
    result = subprocess.run(
        ["nft", "--check", "-f", "-"], input=sandbox.render_rules(policy), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_resolvers_on_loopback_are_left_out(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nsearch x\n")
    assert sandbox.resolvers(conf) == ("10.0.0.2", "fe80::1")


def test_sandbox_subnets_are_slash_30s_of_their_own_network():
    subnet = sandbox._free_subnet(sandbox.Policy(table="t", prefix="p"))
    assert subnet.prefixlen == 30 and subnet.subnet_of(sandbox.SANDBOX_NETWORK)
    assert ipaddress.ip_address(list(subnet.hosts())[0]).is_private
