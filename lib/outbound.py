"""Where the farm itself connects on a repository's behalf: its clone URL and the
GitHub API base, held to the builds' egress rules (lib/egress.py).

A clone URL is typed by whoever may register a repository, and the worker that
clones it is not in a sandbox: `http://169.254.169.254/` or
`http://127.0.0.1:6379/` would make the farm read its cloud metadata or talk to
its own Redis. Here only what the text of a URL shows is checked: an IP
literal (in any spelling git's resolver accepts, such as `2130706433` or
`0x7f.1`) and the names that always mean loopback. Other host names are
resolved, and checked, when the worker clones (builds/sources/git.py).

GENERATOR_ALLOW_LOCAL_REPOSITORIES lets a single-machine farm and the tests use
local git servers and a fake GitHub on loopback.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

from lib.egress import refusal_reason

_LEGACY_IPV4 = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}")
# user@host:path, git's scp-like syntax (no scheme)
_SCP_LIKE = re.compile(r"(?:[^@/]+@)?(?P<host>\[[^\]]*\]|[^:/\[\]]+):")
# Not in a URL git or curl should see: whitespace, controls, a backslash.
_UNSAFE = re.compile(r"[\x00-\x20\x7f\\]")


class RefusedURL(ValueError):
    pass


def url_host(url: str) -> str | None:
    """The host a URL names, lower case, without brackets or a final dot; None
    for a URL with no host (file://)."""
    if "://" in url:
        try:
            host = urlsplit(url).hostname
        except ValueError:
            raise RefusedURL(f"{url!r} is not a URL") from None
    else:
        match = _SCP_LIKE.match(url)
        host = match["host"].strip("[]").lower() if match else None
    if host is None:
        return None
    return host.split("%", 1)[0].rstrip(".")  # an IPv6 zone does not change the address


def literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host that is an IP literal stands for, or None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _LEGACY_IPV4.fullmatch(host):  # 127.1, 2130706433, 0x7f000001, 0177.0.0.1: inet_aton reads them
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def host_refusal(host: str) -> str | None:
    """Why the egress rules refuse `host` when it is written as an address (or
    as localhost), else None."""
    if host == "localhost" or host.endswith(".localhost"):
        return "a loopback address"
    address = literal_address(host)
    if address is None:
        return None
    return refusal_reason(str(address))


def check_url(url: str, *, allow_local: bool, what: str) -> None:
    """Raises RefusedURL for a URL whose host the egress rules refuse."""
    if _UNSAFE.search(url):
        raise RefusedURL(f"{what} {url!r} has whitespace, a control character or a backslash")
    if allow_local:
        return
    host = url_host(url)
    if host is not None and (reason := host_refusal(host)):
        raise RefusedURL(
            f"{what} {url} names {host}, {reason} (the farm's egress rules, docs/security.md;"
            " GENERATOR_ALLOW_LOCAL_REPOSITORIES=true allows local addresses)"
        )
