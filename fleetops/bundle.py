"""Update bundles and their signing key: `iot ota keygen` and `iot ota build`.

A bundle (iot/contract.py OTA_*; docs/CONTRACT.md, "Over-the-air updates") is

    b"IOT\\x01" | manifest length | signature length | manifest | signature | the files, in manifest order

The manifest is compact JSON: {"v": 1, "version", "key" (the signing key's id), "force", "files":
[[name, size, sha256 hex], ...]} with main.py last. The signature is RSASSA-PKCS1-v1_5 with SHA-256
over the manifest's bytes, by a 3072-bit RSA key (exponent 65537); the board holds only the public
modulus (`ota.pub`, put there by `iot flash --ota-key`) and verifies with one `pow` in MicroPython's
bignum code (measured: docs/MEASUREMENTS.md, "OTA signature"). A bundle's id is the first 8 bytes of
the manifest's SHA-256, which covers every file's hash, in hex.

The firmware's version is stamped into the bundled config.py (FW_VERSION), so what a board reports
after the update is what the bundle says. boot.py and otaboot.py never travel in a bundle: the code
that rolls an update back is the one an update cannot break.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from fleetops.errors import BundleError
from hil import paths
from hil.errors import FlashError
from hil.flash import compile_mpy
from iot import contract

__all__ = ["Bundle", "build", "key_id", "keygen", "load_private_key", "read"]

KEY_BITS = 3072
PUBLIC_EXPONENT = 65537
VERSION = re.compile(r"^\d{1,6}(\.\d{1,6}){0,3}$")
_FW_LINE = re.compile(r'^FW_VERSION = "[^"\n]*"$', re.MULTILINE)


def key_id(modulus: bytes) -> str:
    """What a manifest names its key by, and what a board computes from its ota.pub."""
    return hashlib.sha256(modulus).digest()[:8].hex()


def _modulus(public: rsa.RSAPublicKey) -> bytes:
    numbers = public.public_numbers()
    if numbers.e != PUBLIC_EXPONENT:
        raise BundleError(f"the key's public exponent is {numbers.e}; boards verify with {PUBLIC_EXPONENT}")
    return numbers.n.to_bytes((public.key_size + 7) // 8, "big")


def keygen(folder: Path, name: str = "ota") -> tuple[Path, Path, str]:
    """A new signing key: FOLDER/NAME.pem (private, mode 0600; refused if it exists) and
    FOLDER/NAME.pub (the board's ota.pub). Returns both paths and the key id."""
    folder.mkdir(parents=True, exist_ok=True)
    private_path, public_path = folder / f"{name}.pem", folder / f"{name}.pub"
    if private_path.exists():
        raise BundleError(f"{private_path} exists: a new key would orphan every board that trusts it")
    key = rsa.generate_private_key(public_exponent=PUBLIC_EXPONENT, key_size=KEY_BITS)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    modulus = _modulus(key.public_key())
    public_path.write_bytes(modulus)
    return private_path, public_path, key_id(modulus)


def load_private_key(path: Path) -> rsa.RSAPrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read the signing key {path}: {exc.strerror}") from None
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise BundleError(f"{path} may be read by others (mode {mode:o}); chmod 600 it")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise BundleError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < 2048:
        raise BundleError(f"{path} is not an RSA key of at least 2048 bits (`iot ota keygen` makes one)")
    return key


@dataclass(frozen=True)
class Bundle:
    id: str
    version: str
    key: str
    force: bool
    files: tuple[tuple[str, int, str], ...]
    manifest: bytes
    signature: bytes
    data: bytes  # the whole bundle as it travels

    @property
    def size(self) -> int:
        return len(self.data)

    def file_bytes(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        at = contract.OTA_BUNDLE_HEAD + len(self.manifest) + len(self.signature)
        for name, size, _digest in self.files:
            out[name] = self.data[at : at + size]
            at += size
        return out


def _stamped(source: Path, version: str, into: Path) -> Path:
    """firmware/ copied to `into` with config.py's FW_VERSION set to `version`."""
    into.mkdir(parents=True, exist_ok=True)
    for path in paths.firmware_files(source):
        shutil.copyfile(path, into / path.name)
    config = into / "config.py"
    text = config.read_text()
    if len(_FW_LINE.findall(text)) != 1:
        raise BundleError(f'{source / "config.py"} has no single `FW_VERSION = "..."` line to stamp')
    config.write_text(_FW_LINE.sub(f'FW_VERSION = "{version}"', text))
    return into


def _files(firmware: Path, version: str, mpy: bool, arch: str, work: Path) -> list[tuple[str, bytes]]:
    if not (firmware / "main.py").is_file():
        raise BundleError(f"{firmware} has no main.py: not a firmware folder")
    stamped = _stamped(firmware, version, work / "src")
    if mpy:
        try:
            compile_mpy(work / "mpy", arch, stamped)
        except FlashError as exc:
            raise BundleError(f"compiling the firmware failed: {exc}") from None
    out = []
    for path in paths.firmware_files(stamped):
        if path.name in paths.BOOTLOADER:
            continue
        if mpy and path.name not in paths.ENTRY_FILES:
            out.append((path.stem + ".mpy", (work / "mpy" / (path.stem + ".mpy")).read_bytes()))
        else:
            out.append((path.name, path.read_bytes()))
    return out  # firmware_files' order: main.py last


def build(
    firmware: Path,
    version: str,
    key_path: Path,
    out: Path,
    mpy: bool = False,
    arch: str = "",
    force: bool = False,
) -> Bundle:
    """Build, sign and write a bundle; returns it as read back (so what is written is checked)."""
    if not VERSION.match(version):
        raise BundleError(f"version {version!r}: numbers and dots, e.g. 0.2.0 (boards compare them in order)")
    key = load_private_key(key_path)
    modulus = _modulus(key.public_key())
    with tempfile.TemporaryDirectory(prefix="iot-ota-") as tmp:
        files = _files(firmware, version, mpy, arch, Path(tmp))
    manifest = json.dumps(
        {
            "v": 1,
            "version": version,
            "key": key_id(modulus),
            "force": force,
            "files": [[name, len(data), hashlib.sha256(data).hexdigest()] for name, data in files],
        },
        separators=(",", ":"),
    ).encode()
    signature = key.sign(manifest, padding.PKCS1v15(), hashes.SHA256())
    head = contract.OTA_BUNDLE_MAGIC + struct.pack(">HH", len(manifest), len(signature))
    data = head + manifest + signature + b"".join(d for _n, d in files)
    if len(head) + len(manifest) + len(signature) > contract.OTA_MAX_HEADER:
        raise BundleError(f"the manifest is too long for a board ({len(manifest)} bytes): fewer files")
    if len(data) > contract.OTA_MAX_BUNDLE:
        raise BundleError(f"the bundle is {len(data)} bytes, boards take at most {contract.OTA_MAX_BUNDLE}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.tmp")
    tmp_out.write_bytes(data)
    tmp_out.replace(out)
    return read(out)


def read(path: Path) -> Bundle:
    """A bundle file, its structure and every file's hash checked (not its signature: that is the
    board's to check, against the key it trusts)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror}") from None
    return parse(data, str(path))


def parse(data: bytes, name: str = "bundle") -> Bundle:
    head = contract.OTA_BUNDLE_HEAD
    if len(data) < head or data[:4] != contract.OTA_BUNDLE_MAGIC:
        raise BundleError(f"{name} is not an update bundle (`iot ota build` makes them)")
    mlen, slen = struct.unpack_from(">HH", data, 4)
    manifest = data[head : head + mlen]
    signature = data[head + mlen : head + mlen + slen]
    try:
        m = json.loads(manifest)
        files = tuple((str(n), int(s), str(d)) for n, s, d in m["files"])
        version, key, force = str(m["version"]), str(m["key"]), bool(m.get("force", False))
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{name}: its manifest is not valid ({exc})") from None
    at = head + mlen + slen
    for fname, size, digest in files:
        if hashlib.sha256(data[at : at + size]).hexdigest() != digest:
            raise BundleError(f"{name}: {fname} does not match the manifest's SHA-256 (a damaged file)")
        at += size
    if at != len(data):
        raise BundleError(f"{name}: {len(data) - at} bytes beyond the manifest's files")
    return Bundle(
        hashlib.sha256(manifest).digest()[:8].hex(), version, key, force, files, manifest, signature, data
    )
