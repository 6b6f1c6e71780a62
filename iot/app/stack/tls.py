"""The native broker's TLS files: a CA and a server certificate under `<state>/tls/`, made with the
openssl command line (no Python crypto dependency) and reused while they are valid.

    ca.crt       the CA certificate: what a board (`tls_ca_file`) and the gateway (`IOT_MQTT_TLS_CA`)
                 verify the broker with; 10 years, so boards keep it across server renewals
    ca.key       the CA's key (0600): it signs the server certificate, never leaves this folder
    server.crt   the broker's certificate, signed by the CA, for the stack's host names
    server.key   the broker's key (0600)

`ensure` keeps what is valid: the server certificate is issued again (same CA) when it expires within
RENEW_BEFORE_DAYS, no longer verifies against the CA, or names other hosts than asked; the CA is made
again (and with it the server certificate) only when it is missing, unreadable or about to expire.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from iot import log
from iot.errors import IotError

__all__ = ["CertificateError", "TlsFiles", "ensure", "expiry", "san_hosts"]

_log = log.get("iot.stack.tls")
CA_DAYS = 3650
SERVER_DAYS = 825
RENEW_BEFORE_DAYS = 30


class CertificateError(IotError):
    """openssl failed to make or read a certificate; the message has its output."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path | None = None) -> str:
    if shutil.which("openssl") is None:
        raise CertificateError("the openssl command is missing (`iot stack install` installs it)")
    proc = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        raise CertificateError(f"openssl {args[0]} failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
    return proc.stdout


def _valid_for(cert: Path, days: int) -> bool:
    """The certificate parses and does not expire within `days`."""
    proc = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-checkend", str(days * 86400)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return proc.returncode == 0


def expiry(cert: Path) -> datetime:
    """The certificate's notAfter, in UTC."""
    out = _openssl("x509", "-in", str(cert), "-noout", "-enddate").strip()
    return datetime.strptime(out.split("=", 1)[1], "%b %d %H:%M:%S %Y %Z").replace(tzinfo=UTC)


def _ip(host: str) -> str | None:
    """The canonical form of an IP address (openssl prints ::1 as 0:0:0:0:0:0:0:1), None for a name."""
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return None


def _canonical(hosts: list[str]) -> set[str]:
    return {_ip(h) or h.lower() for h in hosts}


def san_hosts(cert: Path) -> set[str]:
    """The DNS names and IP addresses in the certificate's subjectAltName (IPs canonical)."""
    out = _openssl("x509", "-in", str(cert), "-noout", "-ext", "subjectAltName")
    hosts = []
    for item in out.splitlines()[-1].split(","):
        kind, _, value = item.strip().partition(":")
        if kind in ("DNS", "IP Address") and value:
            hosts.append(value.strip())
    return _canonical(hosts)


def _verifies(ca: Path, cert: Path) -> bool:
    proc = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca), str(cert)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return proc.returncode == 0


def _config(cn: str, hosts: list[str]) -> str:
    alt = ",".join(f"IP:{h}" if _ip(h) else f"DNS:{h}" for h in hosts)
    # Our own openssl config: the system's openssl.cnf may add extensions of its own (or none).
    return f"""[req]
distinguished_name = dn
prompt = no
[dn]
CN = {cn}
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = {alt}
authorityKeyIdentifier = keyid
"""


def _make_ca(work: Path, hosts: list[str]) -> None:
    (work / "ca.cnf").write_text(_config(f"iot native stack CA ({hosts[0]})", hosts))
    # RSA 2048: what every mbedTLS build (ESP32 IDF, the unix port) verifies.
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", str(CA_DAYS),
        "-keyout", "ca.key", "-out", "ca.crt", "-config", "ca.cnf", "-extensions", "ca",
        cwd=work,
    )  # fmt: skip


def _make_server(work: Path, ca_dir: Path, hosts: list[str]) -> None:
    (work / "server.cnf").write_text(_config(hosts[0], hosts))
    _openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-config", "server.cnf",
        cwd=work,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "server.csr", "-sha256", "-days", str(SERVER_DAYS),
        "-CA", str(ca_dir / "ca.crt"), "-CAkey", str(ca_dir / "ca.key"),
        "-set_serial", str(secrets.randbits(63)),
        "-extfile", "server.cnf", "-extensions", "server", "-out", "server.crt",
        cwd=work,
    )  # fmt: skip


def _install(work: Path, folder: Path, names: tuple[str, ...]) -> None:
    """Move the new files in by rename (atomic per file), keys readable by their owner only."""
    for name in names:
        if name.endswith(".key"):
            os.chmod(work / name, 0o600)
        os.replace(work / name, folder / name)


def ensure(folder: Path, hosts: list[str]) -> TlsFiles:
    """The CA and server files in `folder`, made or renewed as needed (see the module doc). `hosts`
    (first = the certificate's CN) are the names and addresses clients connect to."""
    folder.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(folder / "ca.crt", folder / "server.crt", folder / "server.key")
    ca_ok = (folder / "ca.key").exists() and files.ca.exists() and _valid_for(files.ca, RENEW_BEFORE_DAYS)
    why = ""
    if not ca_ok:
        why = "no valid CA"
    elif not files.cert.exists() or not files.key.exists():
        why = "no server certificate"
    elif not _valid_for(files.cert, RENEW_BEFORE_DAYS):
        why = f"server certificate expires within {RENEW_BEFORE_DAYS} days"
    elif not _verifies(files.ca, files.cert):
        why = "server certificate is not signed by the CA"
    elif san_hosts(files.cert) != _canonical(hosts):
        why = f"server certificate names {sorted(san_hosts(files.cert))}, wanted {sorted(_canonical(hosts))}"
    if not why:
        return files
    with tempfile.TemporaryDirectory(dir=folder, prefix=".new-") as tmp:
        work = Path(tmp)
        if not ca_ok:
            _make_ca(work, hosts)
            _install(work, folder, ("ca.key", "ca.crt"))
        _make_server(work, folder, hosts)
        _install(work, folder, ("server.key", "server.crt"))
    _log.info(
        "tls_certificates_made",
        reason=why,
        ca_new=not ca_ok,
        hosts=",".join(hosts),
        ca=files.ca,
        valid_until=expiry(files.cert).date().isoformat(),
    )
    return files
