"""Over-the-air updates, the board's side: receive a signed bundle over MQTT, stage it, verify it and
hand it to the boot journal (otaboot.py); fleet.py judges the new version's trial.

Wire (docs/CONTRACT.md, "Over-the-air updates"): the operator retains an offer {"id", "version",
"size"} on sensors/{place}/{device}/ota and sends the bundle in chunks on .../ota/chunk: 8 bytes of
bundle id, the offset and the CRC-32 of the data (uint32 big-endian each), then the data. The board
takes a chunk only at the offset it has reached (`update_have` in its health, published every
WINDOW bytes), so the sender resumes from there after a drop, a reboot or a lost chunk; a chunk whose
CRC does not match is refused and counted (`update_bad_chunks`).

The bundle: b"IOT\\x01", the manifest's and the signature's lengths (uint16 big-endian), the manifest
(JSON: version, key id, force, files as [name, size, sha256 hex] with main.py last), its signature
(RSA PKCS#1 v1.5 over SHA-256 of the manifest, checked against the public key in ota.pub), then the
files in manifest order. The header is checked as soon as it is in: another key, a bad signature, a
version not newer than the running one (unless the signed manifest says force), a bad file list or
too little flash refuse the update before any file is downloaded. Files go straight into
ota.d/new/; once all are in, each is read back from flash and its SHA-256 compared before the
journal is written (install). Nothing of the running firmware changes before the next boot.
"""

import binascii
import gc
import hashlib
import json
import os
import struct

import log
from fleet import DIR, HEADER, LAST, NEW, OFFER, PREV, RESULT, STATE, TRIAL_S, read_json, remove, write_json

MAGIC = b"IOT\x01"
HEAD = 8  # magic, manifest length, signature length
CHUNK_HEAD = 16  # bundle id (8), offset (4), crc32 (4)
KEY_FILE = "ota.pub"  # the RSA modulus, big-endian; the exponent is 65537
WINDOW = 8192  # bytes between two progress reports (the sender's window)
MAX_BUNDLE = 1048576
MAX_HEADER = 8192
# In new/ once the header checked out and new/ was cleared for the bundle's files (_reset_staging
# clears it with them at the next offer).
STAGED = NEW + "/.staged"
_RESERVE_BLOCKS = 16  # flash left free after staging: the outbox and littlefs need room too
# DER of the SHA-256 DigestInfo that PKCS#1 v1.5 puts before the digest (RFC 8017, 9.2 note 1).
_DIGEST_INFO = b"\x30\x31\x30\x0d\x06\x09\x60\x86\x48\x01\x65\x03\x04\x02\x01\x05\x00\x04\x20"
_BOOT_FILES = ("boot.py", "otaboot.py", "otaboot.mpy")

TYPE_CHECKING = False
if TYPE_CHECKING:
    from board_esp32 import Board


def hexstr(data: bytes) -> str:
    return binascii.hexlify(data).decode()


def version_key(text: str) -> tuple:
    """"1.10.2" -> (1, 10, 2); a part that is not a number sorts first."""
    out = []
    for part in text.split("."):
        try:
            out.append(int(part))
        except ValueError:
            out.append(-1)
    return tuple(out)


def rsa_verify(modulus: bytes, sig: bytes, digest: bytes) -> bool:
    """RSASSA-PKCS1-v1_5 with SHA-256, e = 65537: the whole expected encoding is rebuilt and compared
    (no parsing of the decrypted block, so no padding-oracle or lax-parsing forgeries)."""
    k = len(modulus)
    if len(sig) != k or k < 128:
        return False
    n = int.from_bytes(modulus, "big")
    s = int.from_bytes(sig, "big")
    if s >= n:
        return False
    em = pow(s, 65537, n).to_bytes(k, "big")
    pad = k - 3 - len(_DIGEST_INFO) - len(digest)
    return em == b"\x00\x01" + b"\xff" * pad + b"\x00" + _DIGEST_INFO + digest


def _file_size(path: str) -> int:
    try:
        return os.stat(path)[6]
    except OSError:
        return 0


def _clear(folder: str) -> None:
    try:
        names = os.listdir(folder)
    except OSError:
        os.mkdir(folder)
        return
    for name in names:
        os.remove(folder + "/" + name)


def _entries(files: list) -> list | str:
    """The manifest's files as the transfer keeps them, [(name, size), ...], or why the list is bad
    (refused only once the signature checked out: the reasons come in the order they always did)."""
    out = []
    last = len(files) - 1
    for i, entry in enumerate(files):
        name, size, digest_hex = entry
        if (not isinstance(name, str) or "/" in name or name in _BOOT_FILES
                or not (name.endswith(".py") or name.endswith(".mpy")) or not isinstance(size, int)
                or size < 0 or not isinstance(digest_hex, str) or len(digest_hex) != 64):
            return "bad file entry %r in the manifest" % (name,)
        if name == "main.py" and i != last:
            return "main.py must be the manifest's last file (it is swapped last)"
        out.append((name, size))
    return out


class Refused(Exception):
    pass


class Updater:
    def __init__(self, board: Board, running: str) -> None:
        self.board = board
        self.running = running
        self.offer: dict | None = None
        self._idb = b""
        self.have = 0
        self._head_len = 0  # known once the first HEAD bytes are in
        self.files: list | None = None  # the verified manifest's (name, size)s, once the header checked out
        self._digest = b""  # the manifest's SHA-256, once checked
        self.version = ""
        self.bad_chunks = 0
        self.error = ""
        self.state = "idle"
        self.verify_due = False
        self.ready = False  # every file verified: the node may hand over
        self.report = False  # a progress report (health) is due
        self._mark = 0
        try:
            os.mkdir(DIR)
        except OSError:
            pass  # there already
        result = read_json(RESULT) or read_json(LAST)  # LAST: an outcome already reported
        self.state = result.get("state", "idle")
        self.version = result.get("version", "")
        self.error = result.get("error", "")
        self.bundle = result.get("id", "")
        self._done = (self.bundle, result.get("push", 0))  # the push already answered
        offer = read_json(OFFER)
        if offer:
            self._resume(offer)

    # --- what health says --------------------------------------------------------------------
    def fields(self, out: dict) -> None:
        out["update_state"] = self.state
        if self.version:
            out["update_version"] = self.version
        if self.bundle:
            out["update_id"] = self.bundle
        if self.offer is not None:
            out["update_have"] = self.have
            out["update_size"] = self.offer["size"]
        if self.error:
            out["update_error"] = self.error
        if self.bad_chunks:
            out["update_bad_chunks"] = self.bad_chunks

    # --- messages (called from the MQTT client's read: no publishing here) -------------------
    def on_offer(self, payload: memoryview) -> None:
        if not len(payload):
            return  # the operator cleared the offer
        try:
            o = json.loads(bytes(payload))
            oid, version, size = o["id"], o["version"], o["size"]
            push, trial_s = o.get("push", 0), o.get("trial_s", TRIAL_S)
            if not (isinstance(oid, str) and len(oid) == 16 and isinstance(version, str)
                    and 0 < len(version) <= 32 and isinstance(size, int) and HEAD < size <= MAX_BUNDLE
                    and isinstance(push, int) and isinstance(trial_s, int) and 30 <= trial_s <= 3600):
                raise ValueError("fields")
        except (ValueError, KeyError, TypeError) as exc:
            log.event("ota_offer_invalid", error=exc, action="ignored; `iot ota push` sends valid ones")
            return
        if (oid, push) == self._done:
            return  # this push was answered (the retained offer comes at every connect)
        if self.offer is not None and self.offer["id"] == oid:
            self.offer["push"] = push
            self.offer["trial_s"] = trial_s
            self.report = True  # the sender (re)started: tell it where to resume
            return
        self._reset_staging()
        self.offer = {"id": oid, "version": version, "size": size, "push": push, "trial_s": trial_s}
        self.bundle = oid
        self._idb = binascii.unhexlify(oid)
        write_json(OFFER, self.offer)
        self.state = "receiving"
        self.version = version
        self.error = ""
        self.bad_chunks = 0
        self.report = True
        log.event("ota_offer", id=oid, version=version, size=size, running=self.running)

    def on_chunk(self, payload: memoryview) -> None:
        offer = self.offer
        if offer is None or self.verify_due or self.ready or len(payload) <= CHUNK_HEAD:
            return
        if bytes(payload[:8]) != self._idb:
            return  # a chunk of another bundle
        off, crc = struct.unpack_from(">II", payload, 8)
        if off != self.have:
            return  # not where this board is: the sender resumes from update_have
        data = payload[CHUNK_HEAD:]
        if binascii.crc32(data) & 0xFFFFFFFF != crc:
            self.bad_chunks += 1
            self.report = True
            log.event("ota_chunk_refused", offset=off, reason="crc mismatch", bad_chunks=self.bad_chunks,
                      action="not stored; the sender sends it again from update_have")
            return
        if off + len(data) > offer["size"]:
            self._refuse("a chunk goes beyond the offered size %d" % offer["size"])
            return
        try:
            self._store(data)
        except Refused as exc:
            self._refuse(str(exc))
            return
        except OSError as exc:  # the flash is full or failing: a later offer may do better
            self._refuse("flash write failed: " + repr(exc))
            return
        if self.have == offer["size"]:
            self.verify_due = True
            self.state = "verifying"
            self.report = True
        elif self.have - self._mark >= WINDOW:
            self._mark = self.have
            self.report = True

    # --- storing -----------------------------------------------------------------------------
    def _store(self, data: memoryview) -> None:
        while len(data):
            if self.files is None:
                need = (self._head_len or HEAD) - self.have
                part = data[:need]
                with open(HEADER, "ab") as f:
                    f.write(part)
                self.have += len(part)
                data = data[len(part):]
                if not self._head_len and self.have == HEAD:
                    self._head_len = self._lengths()
                if self._head_len and self.have == self._head_len:
                    self._check_header()
                continue
            name, size, pos = self._locate(self.have)
            part = data[: size - pos]
            with open(NEW + "/" + name, "ab") as f:
                f.write(part)
            self.have += len(part)
            data = data[len(part):]

    def _lengths(self) -> int:
        with open(HEADER, "rb") as f:
            head = f.read(HEAD)
        if head[:4] != MAGIC:
            raise Refused("not an update bundle (bad magic)")
        mlen, slen = struct.unpack_from(">HH", head, 4)
        if HEAD + mlen + slen > MAX_HEADER:
            raise Refused("header of %d bytes is too long" % (HEAD + mlen + slen))
        return HEAD + mlen + slen

    def _locate(self, at: int) -> tuple:
        pos = at - self._head_len
        for entry in self.files:  # type: ignore[union-attr]
            if pos < entry[1]:
                return entry[0], entry[1], pos
            pos -= entry[1]
        raise Refused("data beyond the manifest's files")

    def _check_header(self, resuming: bool = False) -> None:
        """Everything about the bundle that can be known before its files: refuse early. Resuming,
        the files already staged stay and the space they take was checked when they began.

        The signature is checked first, on a heap that holds little else: its numbers need ~5 KB at
        pow's peak in runs of 770 bytes (unix port), and the manifest's objects, parsed first, had
        left the heap in pieces too small for them (on the rig's boards every header chunk was
        dropped, "no heap"). The manifest is hashed from flash, parsed only once the signature
        checked out (or to say why it did not), and the transfer keeps only the files' names and
        sizes: their SHA-256s are read again from the header at the end (_verify)."""
        offer = self.offer
        assert offer is not None
        gc.collect()
        # What the signature check holds is read first, so that it lies low in the heap and the
        # check's own numbers find the runs above it free; the manifest's hash only uses the heap
        # for moments.
        try:
            with open(KEY_FILE, "rb") as f:
                key = f.read()
        except OSError:
            raise Refused("no " + KEY_FILE + " on the board: it takes no updates (iot flash --ota-key)")
        with open(HEADER, "rb") as f:
            mlen, slen = struct.unpack(">HH", f.read(HEAD)[4:])
            f.seek(HEAD + mlen)
            sig = f.read(slen)
        h = hashlib.sha256(key)
        trusted = hexstr(h.digest()[:8])
        h = hashlib.sha256()
        mv = memoryview(bytearray(256))
        with open(HEADER, "rb") as f:
            f.seek(HEAD)
            left = mlen
            while left:
                n = f.readinto(mv[: min(256, left)])
                if not n:
                    break  # a short header: its digest is not the offer's id
                h.update(mv[:n])
                left -= n
        digest = h.digest()
        del h, mv
        if hexstr(digest[:8]) != offer["id"]:
            raise Refused("the offer's id does not match the bundle's manifest")
        self.board.feed()
        gc.collect()
        signed = rsa_verify(key, sig, digest)
        del key, sig
        gc.collect()
        with open(HEADER, "rb") as f:
            f.seek(HEAD)
            manifest = f.read(mlen)
        try:
            m = json.loads(manifest)
            version = m["version"]
            key_id = m["key"]
            force = m.get("force") is True
            files = _entries(m["files"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise Refused("the manifest is not valid JSON with version, key and files")
        del m, manifest
        if key_id != trusted:
            raise Refused("signed by another key (%s); this board trusts %s" % (key_id, trusted))
        if not signed:
            raise Refused("bad signature: the manifest was not signed by key " + trusted)
        if not isinstance(version, str) or version != offer["version"]:
            raise Refused("the manifest's version %r is not the offered %r" % (version, offer["version"]))
        if version_key(version) <= version_key(self.running) and not force:
            raise Refused("version %s is not newer than the running %s (a bundle built with --force may "
                          "go back)" % (version, self.running))
        if isinstance(files, str):
            raise Refused(files)
        total = self._head_len
        blocks = 0
        bs = os.statvfs(".")[0]
        for entry in files:
            total += entry[1]
            blocks += entry[1] // bs + 2
        if total != offer["size"]:
            raise Refused("the bundle holds %d bytes, the offer says %d" % (total, offer["size"]))
        if not resuming:
            free = os.statvfs(".")[3] - _RESERVE_BLOCKS
            if blocks > free:
                raise Refused("needs %d KB of flash, %d KB free"
                              % (blocks * bs // 1024, max(0, free) * bs // 1024))
            _clear(NEW)
            for entry in files:
                if not entry[1]:
                    open(NEW + "/" + entry[0], "wb").close()  # no chunk will create an empty file
            with open(STAGED, "wb") as f:  # new/ is this bundle's now: a resume may count what it holds
                f.write(b"1")
        self.files = files
        self._digest = digest
        log.event("ota_header_ok", version=version, files=len(files), signed_by=trusted)

    def _resume(self, offer: dict) -> None:
        """After a reboot: carry on from what the flash holds."""
        self.offer = offer
        self.bundle = offer["id"]
        self._idb = binascii.unhexlify(offer["id"])
        self.version = offer["version"]
        self.state = "receiving"
        self.have = _file_size(HEADER)
        try:
            if self.have >= HEAD:
                self._head_len = self._lengths()
            if self._head_len and self.have >= self._head_len:
                self.have = self._head_len
                # The key and signature again: cheap, and nothing is assumed. Without the mark the
                # last boot stopped inside the first check (a crash, a power cut): new/ is not this
                # bundle's yet, so the check is done whole (the flash space, new/ cleared).
                self._check_header(_file_size(STAGED) > 0)
                for entry in self.files:  # type: ignore[union-attr]
                    got = _file_size(NEW + "/" + entry[0])
                    self.have += got
                    if got < entry[1]:
                        break
        except Refused as exc:
            self._refuse(str(exc))
            return
        self._mark = self.have
        if self.have == offer["size"]:
            self.verify_due = True
            self.state = "verifying"
        self.report = True
        log.event("ota_resume", id=offer["id"], have=self.have, size=offer["size"])

    # --- verification and hand-over (from the node's loop; fleet.py judges the trial) --------------
    def step(self) -> bool:
        """True when the node must hand over now: spill its outbox, install(), reset."""
        if self.verify_due:
            self.verify_due = False
            self._verify()
        return self.ready

    def _digests(self) -> list:
        """The files' SHA-256s (hex), from the manifest in the header, which must still be the one
        whose signature was checked."""
        with open(HEADER, "rb") as f:
            mlen = struct.unpack(">H", f.read(HEAD)[4:6])[0]
            manifest = f.read(mlen)
        if hashlib.sha256(manifest).digest() != self._digest:
            raise Refused("the header changed on flash since its signature was checked")
        return [e[2] for e in json.loads(manifest)["files"]]

    def _verify(self) -> None:
        try:
            digests = self._digests()
        except (Refused, OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            self._refuse("the manifest could not be read again: " + str(exc))
            return
        buf = bytearray(512)
        mv = memoryview(buf)
        for i, (name, size) in enumerate(self.files):  # type: ignore[arg-type]
            h = hashlib.sha256()
            got = 0
            try:
                with open(NEW + "/" + name, "rb") as f:
                    while True:
                        n = f.readinto(buf)
                        if not n:
                            break
                        h.update(mv[:n])
                        got += n
                        self.board.feed()
            except OSError:
                pass
            if got != size or hexstr(h.digest()) != digests[i]:
                self._refuse("file %s does not match the manifest's SHA-256 (corrupted in transfer or "
                             "on flash)" % name)
                return
        self.ready = True
        log.event("ota_verified", version=self.version, files=len(self.files))  # type: ignore[arg-type]

    def install(self) -> None:
        """Write the journal; boot.py swaps at the next boot. The node spilled its outbox first."""
        names = [e[0] for e in self.files]  # type: ignore[union-attr]
        old = [n for n in os.listdir() if (n.endswith(".py") or n.endswith(".mpy")) and n not in _BOOT_FILES]
        _clear(PREV)
        offer = self.offer
        assert offer is not None
        write_json(STATE, {"s": "swap", "id": offer["id"], "push": offer["push"], "version": self.version,
                           "trial_s": offer.get("trial_s", TRIAL_S), "from": self.running, "files": names,
                           "added": [n for n in names if n not in old],
                           "removed": [n for n in old if n not in names]})
        remove(OFFER)
        remove(HEADER)
        remove(RESULT)
        log.event("ota_install", version=self.version, running=self.running, action="resetting into a trial")

    # --- refusals ----------------------------------------------------------------------------
    def _refuse(self, why: str) -> None:
        offer = self.offer or {}
        log.event("ota_refused", id=offer.get("id"), version=offer.get("version"), why=why,
                  action="the running firmware is untouched")
        write_json(RESULT, {"state": "refused", "id": offer.get("id", ""), "push": offer.get("push", 0),
                            "version": offer.get("version", ""), "from": self.running, "error": why})
        self._done = (offer.get("id", ""), offer.get("push", 0))
        self._reset_staging()
        self.state = "refused"
        self.error = why
        self.report = True

    def _reset_staging(self) -> None:
        self.offer = None
        self._idb = b""
        self.have = 0
        self._head_len = 0
        self.files = None
        self.verify_due = False
        self.ready = False
        self._mark = 0
        remove(OFFER)
        remove(HEADER)
        try:
            for name in os.listdir(NEW):
                os.remove(NEW + "/" + name)
        except OSError:
            pass
