"""The ESP32 port's TLS module as each MicroPython version has it, over the unix port's mbedTLS.

`Tls` is `tls` (1.23 on, extmod/modtls_mbedtls.c), `Ssl` is 1.22's `ssl` (extmod/modssl_mbedtls.c);
`vboard.Board.tls_module()` hands the firmware the one of its profile. What they model:
- the signatures: `load_verify_locations(cadata)` takes one positional argument and no keyword from
  1.23; on 1.22 it is `(cafile=None, *, cadata=None)` and a positional argument is opened as a path;
- the handshake runs over the board's raw socket (VRaw): a socket timeout in it is OSError(116), a
  certificate the board cannot verify a ValueError with mbedTLS's reason (the port's cleanup path),
  and dates are checked against the board's RTC (2000-01-01 until NTP);
- the buffers come from the ESP-IDF heap (Board.idf): OSError(ENOMEM) when it has no room
  (MBEDTLS_ERR_SSL_ALLOC_FAILED), retried once after a garbage collection from 1.25.
The unix port's mbedTLS refuses a PEM CA where the ESP32's takes it: it is handed over as DER.
"""

import tls as _host_tls  # type: ignore[import-not-found]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from hil.virtual.vboard import Board
    from hil.virtual.vnet import VSocket
else:
    from vnet import VSocket

BOARD: "Any" = None  # set by vboard.Board


def _pem_to_der(data: bytes) -> bytes:
    begin = b"-----BEGIN CERTIFICATE-----"
    if not data.startswith(begin):
        return data
    import binascii

    end = data.find(b"-----END CERTIFICATE-----")
    try:
        return binascii.a2b_base64(data[len(begin) : end].replace(b"\n", b""))
    except ValueError:
        return data  # not base64: mbedTLS says what the ESP32 would say about it


class _Context:
    def __init__(self, protocol: int) -> None:
        self._ctx = _host_tls.SSLContext(protocol)
        self._ca = False

    @property
    def verify_mode(self) -> int:
        return self._ctx.verify_mode  # type: ignore[no-any-return]

    @verify_mode.setter
    def verify_mode(self, value: int) -> None:
        self._ctx.verify_mode = value

    def _load_cadata(self, cadata: bytes) -> None:
        try:
            self._ctx.load_verify_locations(_pem_to_der(cadata))
        except ValueError:
            raise ValueError("invalid cert") from None  # MBEDTLS_ERR_X509_BAD_INPUT_DATA on the port
        self._ca = True

    def wrap_socket(self, sock: "VSocket", server_side: bool = False, do_handshake_on_connect: bool = True,
                    server_hostname: "str | None" = None) -> "VSocket":
        board: Board = BOARD
        if self._ctx.verify_mode == _host_tls.CERT_REQUIRED:
            if not self._ca:
                raise ValueError("The certificate is not correctly signed by the trusted CA")
            if not board.synced():
                raise ValueError("The certificate validity starts in the future")
        held = board.idf.tls_setup(board.profile["tls_setup_retry_gc"])
        try:
            board.idf.handshake_peak()
            real = self._ctx.wrap_socket(sock._raw, server_hostname=server_hostname)
        except BaseException:
            board.idf.free(held)
            raise
        stream = VSocket(sock._sock, board, real, sock._raw)
        stream.idf_held = held
        return stream


class Tls:
    """`tls` (1.23 on)."""

    CERT_NONE = _host_tls.CERT_NONE
    CERT_OPTIONAL = _host_tls.CERT_OPTIONAL
    CERT_REQUIRED = _host_tls.CERT_REQUIRED
    PROTOCOL_TLS_CLIENT = _host_tls.PROTOCOL_TLS_CLIENT

    class SSLContext(_Context):
        def load_verify_locations(self, *args: bytes) -> None:
            if len(args) != 1:  # a C function of two positional arguments
                raise TypeError("function takes 2 positional arguments but " + str(len(args) + 1) + " given")
            self._load_cadata(args[0])


class Ssl:
    """1.22's `ssl`."""

    CERT_NONE = _host_tls.CERT_NONE
    CERT_OPTIONAL = _host_tls.CERT_OPTIONAL
    CERT_REQUIRED = _host_tls.CERT_REQUIRED
    PROTOCOL_TLS_CLIENT = _host_tls.PROTOCOL_TLS_CLIENT

    class SSLContext(_Context):
        def load_verify_locations(self, cafile: "Any" = None, *, cadata: "Any" = None) -> None:
            if cafile is not None:
                with open(cafile, "rb") as f:  # a path, whatever it holds
                    self._load_cadata(f.read())
            if cadata is not None:
                self._load_cadata(cadata)
