"""Remote references (http/https) in manifests: off unless config names the host.

A manifest is untrusted, and loom runs next to credentials and metadata servers. So a
remote reference is fetched only when its host is in `allowed_hosts`, and then:
- the name is resolved once, and every address it resolves to must be public
  (`ipaddress`: no private, loopback, link-local, multicast, reserved, unspecified or
  shared ranges; IPv4-mapped IPv6 unwrapped), else the reference is refused;
- the connection goes to that exact checked address (the Host header and TLS SNI carry
  the name), so a second, different DNS answer (rebinding) is never used;
- no redirects, no credentials in the URL, a size cap and a deadline.
Metadata endpoints (169.254.0.0/16, fd00:ec2::254, metadata.google.internal, ...) are
refused whatever the config says.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from loom.schemas.records import Reason
from loom.transforms.sniff import DecodeError
from pydantic import BaseModel, ConfigDict, Field

METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata",
                            "instance-data", "instance-data.ec2.internal"})
METADATA_NETS = tuple(ipaddress.ip_network(n) for n in (
    "169.254.0.0/16", "fd00:ec2::254/128", "100.100.100.200/32", "fe80::/10"))

Resolver = Callable[[str, int], list[str]]


class RemoteConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    allowed_hosts: tuple[str, ...] = ()  # exact host names (or IP literals); empty: none
    # Pinned answers, like curl --resolve: (host, address) pairs. The address is checked too.
    resolve_overrides: tuple[tuple[str, str], ...] = ()
    max_bytes: int = Field(64 << 20, ge=1)
    timeout_s: float = Field(30.0, gt=0)


def system_resolver(host: str, port: int) -> list[str]:
    return [ai[4][0] for ai in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def _forbid(url: str, why: str) -> DecodeError:
    return DecodeError(Reason.FORBIDDEN_REFERENCE, f"reference {url!r} is forbidden: {why}")


def address_problem(addr: str) -> str | None:
    """Why an address may not be contacted (None when it is a public unicast address)."""
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return f"not an IP address: {addr!r}"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in net for net in METADATA_NETS if net.version == ip.version):
        return f"{ip} is a metadata/link-local address"
    for flag in ("is_loopback", "is_private", "is_link_local", "is_multicast", "is_reserved",
                 "is_unspecified"):
        if getattr(ip, flag):
            return f"{ip} {flag.removeprefix('is_').replace('_', '-')}"
    if not ip.is_global:
        return f"{ip} is not a global address"
    return None


def _host(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path?query) of an http(s) URL, or DecodeError."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise _forbid(url, f"scheme {scheme or '(none)'}: only http(s) may be allowed")
    if "@" in parts.netloc:
        raise _forbid(url, "credentials in the URL")
    try:
        host, port = (parts.hostname or "").rstrip(".").lower(), parts.port
    except ValueError as e:
        raise _forbid(url, f"bad host or port: {e}") from None
    if not host:
        raise _forbid(url, "no host")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, host, port or (443 if scheme == "https" else 80), path


def check_remote(url: str, cfg: RemoteConfig) -> None:
    """The config-level check (no network): scheme, metadata host, allow-list."""
    _, host, _, _ = _host(url)
    if host in METADATA_HOSTS or host.endswith(".metadata.google.internal"):
        raise _forbid(url, f"{host} is a metadata endpoint (never fetched)")
    if host not in {h.rstrip(".").lower() for h in cfg.allowed_hosts}:
        raise _forbid(url, f"host {host} is not in allowed_hosts")


def fetch(url: str, cfg: RemoteConfig, resolver: Resolver | None = None,
          check_address: Callable[[str], str | None] = address_problem) -> bytes:
    """The body of a 200 answer, at most `max_bytes`; DecodeError otherwise.

    forbidden_reference: not allowed, or an address that is not public; too_large;
    decode_timeout; unreadable (connection error, non-200, redirect).
    """
    check_remote(url, cfg)
    scheme, host, port, path = _host(url)
    try:
        ipaddress.ip_address(host)
        addrs = [host]
    except ValueError:
        pinned = {k.rstrip(".").lower(): v for k, v in cfg.resolve_overrides}
        try:
            addrs = [pinned[host]] if host in pinned else (resolver or system_resolver)(host, port)
        except OSError as e:
            raise DecodeError(Reason.UNREADABLE, f"cannot resolve {host}: {e}") from None
    if not addrs:
        raise DecodeError(Reason.UNREADABLE, f"{host} resolves to nothing")
    for addr in addrs:  # every answer must be public: no mixing a private one in
        if why := check_address(addr):
            raise _forbid(url, f"{host} resolves to {why}")
    return _get(url, scheme, host, port, path, addrs[0], cfg)


def _get(url: str, scheme: str, host: str, port: int, path: str, addr: str,
         cfg: RemoteConfig) -> bytes:
    deadline = time.monotonic() + cfg.timeout_s
    conn = http.client.HTTPConnection(host, port, timeout=cfg.timeout_s)
    try:
        sock = socket.create_connection((addr, port), timeout=cfg.timeout_s)  # the checked IP
        if scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        conn.sock = sock  # http.client uses it as is: no second lookup
        conn.request("GET", path, headers={"Host": host if port in (80, 443) else f"{host}:{port}",
                                           "User-Agent": "loom-ingest",
                                           "Accept-Encoding": "identity"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise DecodeError(Reason.UNREADABLE, f"GET {url}: HTTP {resp.status} "
                              "(redirects are not followed)")
        declared = resp.getheader("Content-Length")
        if declared and declared.isdigit() and int(declared) > cfg.max_bytes:
            raise DecodeError(Reason.TOO_LARGE, f"GET {url}: {declared} bytes > {cfg.max_bytes}")
        chunks, got = [], 0
        while chunk := resp.read(min(1 << 20, cfg.max_bytes + 1 - got)):
            chunks.append(chunk)
            got += len(chunk)
            if got > cfg.max_bytes:
                raise DecodeError(Reason.TOO_LARGE, f"GET {url}: more than {cfg.max_bytes} bytes")
            if time.monotonic() > deadline:
                raise DecodeError(Reason.DECODE_TIMEOUT, f"GET {url}: over {cfg.timeout_s:g} s")
            if got == cfg.max_bytes + 1:
                break
        return b"".join(chunks)
    except TimeoutError:
        raise DecodeError(Reason.DECODE_TIMEOUT, f"GET {url}: timed out") from None
    except (OSError, http.client.HTTPException) as e:
        raise DecodeError(Reason.UNREADABLE, f"GET {url}: {type(e).__name__}: {e}") from None
    finally:
        conn.close()
