"""TLS for the MQTT link over a connected socket: the same code on an ESP32 and a virtual board.

The board hands over its TLS module (`board.tls_module()`: `tls` from MicroPython 1.23, `ssl` on
1.22) and a connected socket whose per-call timeout bounds the handshake; no CA bundle is built in,
so verifying needs the CA file (config validation insists), and mbedTLS checks the certificate
dates, so the link connects only after NTP. A CA that is not a certificate raises ValueError.
"""


import gc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from board_esp32 import Stream


def wrap(mod: object, sock: Stream, host: str, verify: bool, ca_file: str) -> Stream:
    # mbedTLS takes ~21 KB from the IDF heap here and ~15 KB more during the handshake; before 1.25
    # the port does not collect and retry when that fails, so a TLS socket left to the garbage
    # collector (its finaliser frees those buffers) must be gone first.
    gc.collect()
    ctx = mod.SSLContext(mod.PROTOCOL_TLS_CLIENT)  # type: ignore[attr-defined]
    if verify:
        with open(ca_file, "rb") as f:
            cadata = f.read()
        try:
            # 1.22's ssl: (cafile=None, *, cadata=None), a positional argument is opened as a path.
            ctx.load_verify_locations(cadata=cadata)
        except TypeError:
            ctx.load_verify_locations(cadata)  # tls (1.23 on): one positional argument, no keyword
        ctx.verify_mode = mod.CERT_REQUIRED  # type: ignore[attr-defined]
    else:
        ctx.verify_mode = mod.CERT_NONE  # type: ignore[attr-defined]
    return ctx.wrap_socket(sock, server_hostname=host)  # type: ignore[no-any-return]
