"""MicroPython versions a virtual board can be: what differs between them on an ESP32.

Read from the port's sources at each tag (v1.22.2, v1.24.1, v1.26.1) and the micropython-lib commit
each one freezes; the same subset of Python runs on the board (MicroPython) and on the host.

- `tls_module`: `ssl` (C, extmod/modssl_mbedtls.c) on 1.22, `tls` (extmod/modtls_mbedtls.c) from 1.23.
  1.22's `SSLContext.load_verify_locations(cafile=None, *, cadata=None)` opens a positional argument
  as a file path; 1.23's `tls` takes exactly one positional argument, the CA data, and no keyword.
- `tls_timeout_errno`: a socket timeout under TLS is kept as the session's sticky error
  (`last_error`); through 1.27 the stream raises it as it is, `OSError(-116)`.
- A TLS socket has no `settimeout` on any of them (only `setblocking`).
- `tls_setup_retry_gc`: from 1.25 `mbedtls_ssl_setup` that fails for memory is retried once after a
  garbage collection (an unclosed TLS socket's finaliser gives its buffers back).
- (no longer modelled: the firmware has its own NTP client) micropython-lib's ntptime at 1.22's
  commit maps a transmit time of 0 to a negative epoch (OverflowError in gmtime on a 32-bit port);
  from 1.23's it adds 2^32 s below 2024, so a zero transmit time becomes 2036-02-07.
- `idf`: the ESP-IDF release the port builds with (for the record; the heap model is the same).
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PROFILES: "dict[str, dict[str, Any]]" = {
    "1.22": {"tls_module": "ssl", "tls_timeout_errno": -116, "tls_setup_retry_gc": False, "idf": "5.0.4"},
    "1.24": {"tls_module": "tls", "tls_timeout_errno": -116, "tls_setup_retry_gc": False, "idf": "5.2.2"},
    "1.26": {"tls_module": "tls", "tls_timeout_errno": -116, "tls_setup_retry_gc": True, "idf": "5.4.2"},
}
OLDEST = "1.22"
NEWEST = "1.26"
DEFAULT = "1.24"

# The heap (1.22-1.26 alike, ESP32 without PSRAM): the Python heap starts as one 56 KB area
# (MICROPY_GC_INITIAL_HEAP_SIZE) and grows into the ESP-IDF heap (MICROPY_GC_SPLIT_HEAP_AUTO,
# doubling); compiling the firmware at boot grows it once, to ~110 KB, and that area never empties
# again. What is left of the IDF heap after Wi-Fi and that growth is where mbedTLS takes its
# buffers (CONFIG_MBEDTLS_ASYMMETRIC_CONTENT_LEN: 16 KB in, 4 KB out, plus record overhead) and
# ~15 KB more at the handshake's peak (micropython issue 8940). An estimate from reports of the
# free IDF heap on these versions (PR 12952: 48-110 KB largest block before Wi-Fi), not measured.
PYTHON_HEAP_KB = 110
IDF_FREE_KB = 44
TLS_IN_BYTES = 16717
TLS_OUT_BYTES = 4429
TLS_HANDSHAKE_BYTES = 15360


def get(name: str) -> "dict[str, Any]":
    if name not in PROFILES:
        raise ValueError("unknown MicroPython profile " + repr(name) + "; known: " + ", ".join(PROFILES))
    return PROFILES[name]


class IdfHeap:
    """The ESP-IDF heap left after Wi-Fi and the Python heap's growth (vprofile), as a count of
    bytes: mbedTLS takes its record buffers here while a TLS socket is open and a transient peak
    during the handshake. No fragmentation is modelled: the largest free block is the free count."""

    def __init__(self, free_bytes: int) -> None:
        self.total = free_bytes
        self.free_bytes = free_bytes
        self.min_free = free_bytes
        self.failures = 0

    def _take(self, n: int) -> bool:
        if n > self.free_bytes:
            return False
        self.free_bytes -= n
        self.min_free = min(self.min_free, self.free_bytes)
        return True

    def free(self, n: int) -> None:
        self.free_bytes = min(self.total, self.free_bytes + n)

    def tls_setup(self, retry_after_gc: bool) -> int:
        need = TLS_IN_BYTES + TLS_OUT_BYTES
        if self._take(need):
            return need
        if retry_after_gc:
            import gc

            gc.collect()  # modtls_mbedtls.c from 1.25: a finaliser may give buffers back
            if self._take(need):
                return need
        self.failures += 1
        raise OSError(12)  # ENOMEM: MBEDTLS_ERR_SSL_ALLOC_FAILED, as mbedtls_raise_error spells it

    def handshake_peak(self) -> None:
        if self.free_bytes < TLS_HANDSHAKE_BYTES:
            self.failures += 1
            raise OSError(-0x2880, "X509 - Allocation of memory failed")
        self.min_free = min(self.min_free, self.free_bytes - TLS_HANDSHAKE_BYTES)

    def info(self) -> "list[tuple[int, int, int, int]]":
        """esp32.idf_heap_info(esp32.HEAP_DATA): (total, free, largest free block, minimum free)."""
        return [(self.total, self.free_bytes, self.free_bytes, self.min_free)]
