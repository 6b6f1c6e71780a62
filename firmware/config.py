"""Board configuration: defaults here, site values in config.json on the board, validated at boot.

Runs unchanged on MicroPython and CPython, so `iot flash` validates a config with this same code
before it copies it. Every error names the field.
"""

import json

FILE = "config.json"
FW_VERSION = "0.1.0"
ID_MAX = 64

# None means "required, no default". Secrets have no default other than empty.
DEFAULTS: dict = {
    "device": None,
    "place": None,
    "wifi_ssid": "",
    "wifi_password": "",
    "broker": "mqtt://127.0.0.1:1883",
    "mqtt_user": "",
    "mqtt_password": "",
    "tls_verify": True,
    "tls_ca_file": "",
    "interval_s": 10,
    "i2c_id": 0,
    "i2c_scl": 22,
    "i2c_sda": 21,
    "i2c_freq": 100000,
    "bme280_addr": 0x76,
    "bh1750_addr": 0x23,
    "bh1750_mtreg": 69,
    "offsets": {},
    "outbox_slots": 512,
    "e2e_ack": True,
    "ack_timeout_s": 30,
    "ack_timeout_max_s": 300,
    "keepalive_s": 60,
    "puback_timeout_s": 5,
    "publish_retries": 3,
    "backoff_min_s": 1,
    "backoff_max_s": 60,
    "watchdog_s": 60,
    "ntp_host": "pool.ntp.org",
    "ntp_every_s": 3600,
    "health_every_s": 60,
    "stuck_after": 5,
}

METRICS = ("temperature", "humidity", "pressure", "luminosity")

# (min, max) of numeric fields; ints are checked as ints.
_RANGES = {
    "interval_s": (0.05, 86400),
    "i2c_id": (0, 1),
    "i2c_scl": (0, 48),
    "i2c_sda": (0, 48),
    "i2c_freq": (10000, 400000),  # fast mode: the fastest both the BME280 and the BH1750 take
    "bme280_addr": (0x76, 0x77),
    "bh1750_addr": (0x23, 0x5C),
    "bh1750_mtreg": (31, 254),
    "outbox_slots": (4, 100000),
    "ack_timeout_s": (1, 3600),
    "ack_timeout_max_s": (1, 86400),
    "keepalive_s": (5, 3600),
    "puback_timeout_s": (0.1, 60),
    "publish_retries": (0, 10),
    "backoff_min_s": (0.05, 3600),
    "backoff_max_s": (0.05, 86400),
    "watchdog_s": (5, 3600),
    "ntp_every_s": (60, 604800),
    "health_every_s": (1, 86400),
    "stuck_after": (2, 1000),
}
_INTS = (
    "i2c_id", "i2c_scl", "i2c_sda", "i2c_freq", "bme280_addr", "bh1750_addr", "bh1750_mtreg",
    "outbox_slots", "publish_retries", "stuck_after",
)
_STRINGS = ("wifi_ssid", "wifi_password", "mqtt_user", "mqtt_password", "tls_ca_file", "ntp_host")


class ConfigError(ValueError):
    """The config is unusable; `field` names the offending key."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__("config field '" + field + "': " + problem)
        self.field = field
        self.problem = problem


def valid_id(text: object) -> bool:
    if not isinstance(text, str) or not 1 <= len(text) <= ID_MAX:
        return False
    for c in text:
        if not ("a" <= c <= "z" or "A" <= c <= "Z" or "0" <= c <= "9" or c == "_" or c == "-"):
            return False
    return True


def parse_broker(url: str) -> tuple:
    """mqtt://host[:port] or mqtts://host[:port] -> (host, port, tls)."""
    if url.startswith("mqtt://"):
        rest, tls, port = url[7:], False, 1883
    elif url.startswith("mqtts://"):
        rest, tls, port = url[8:], True, 8883
    else:
        raise ConfigError("broker", "must start with mqtt:// or mqtts://, got " + repr(url))
    if "/" in rest:
        rest = rest[: rest.index("/")]
    if "@" in rest:
        raise ConfigError("broker", "credentials belong in mqtt_user/mqtt_password, not in the URL")
    host = rest
    if ":" in rest:
        host, _, port_text = rest.rpartition(":")
        try:
            port = int(port_text)
        except ValueError:
            raise ConfigError("broker", "port " + repr(port_text) + " is not a number")
        if not 0 < port < 65536:
            raise ConfigError("broker", "port " + port_text + " is out of range")
    if not host:
        raise ConfigError("broker", "has no host")
    return host, port, tls


# ESP32 (classic) GPIOs: 6-11 drive the SPI flash, 20/24/28-31 do not exist, 34-39 are inputs only
# (no open-drain output, so no I2C).
_NOT_I2C_PINS = (6, 7, 8, 9, 10, 11, 20, 24, 28, 29, 30, 31, 34, 35, 36, 37, 38, 39)


def _check_wifi_and_pins(cfg: dict) -> None:
    ssid = cfg["wifi_ssid"]
    if len(ssid.encode()) > 32:
        raise ConfigError("wifi_ssid", "is longer than 32 bytes (802.11 limit)")
    password = cfg["wifi_password"]
    if password and not 8 <= len(password.encode()) <= 63:
        raise ConfigError("wifi_password", "must be empty (open network) or 8..63 characters (WPA2)")
    if password and not ssid:
        raise ConfigError("wifi_password", "given without wifi_ssid")
    for key in ("i2c_scl", "i2c_sda"):
        if cfg[key] in _NOT_I2C_PINS or cfg[key] > 39:
            raise ConfigError(key, "GPIO %d cannot drive I2C on an ESP32 (flash pins 6-11, "
                              "inputs-only 34-39, absent pins)" % cfg[key])
    if cfg["i2c_scl"] == cfg["i2c_sda"]:
        raise ConfigError("i2c_sda", "is the same pin as i2c_scl")


# Flash a record takes at most: header + the longest payload (outbox.py), rounded up.
OUTBOX_RECORD_MAX = 416


def check_outbox_fits(cfg: dict, fs_bytes: int) -> None:
    """On the board: outbox_slots full records must fit in half of the file system."""
    need = cfg["outbox_slots"] * OUTBOX_RECORD_MAX
    if need > fs_bytes // 2:
        raise ConfigError("outbox_slots", "needs up to %d KB of flash, more than half of the %d KB "
                          "file system; lower it" % (need // 1024, fs_bytes // 1024))


# --- the watchdog's worst case -------------------------------------------------------------------
# Every wait of the firmware is one of two kinds. Sliced: socket polls, write loops, the CONNACK,
# SUBACK and PUBACK waits, flash writes record by record; they feed the watchdog at least every
# WAIT_SLICE_MS, so puback_timeout_s or publish_retries never starve it. Unsliced: one call the
# firmware cannot interrupt; it is fed right before and right after, so each alone must fit in
# watchdog_s. Bounds of the unsliced ones on the ESP32 port, in ms:
# getaddrinfo has no timeout: lwIP asks each of up to 3 DNS servers 4 times, 1+1+2+3 s apart, on
# its 1 s timer (lwIP dns.c, DNS_MAX_RETRIES 4, ESP-IDF DNS_MAX_SERVERS 3). A numeric host needs none.
DNS_MS = 22000
NTP_ANSWER_MS = 1000  # ntp_query: getaddrinfo, then one UDP answer within its 1 s socket timeout
CONNECT_MS = 5000  # the TCP connect (link.py; the port emulates the connect timeout with select)
# The handshake runs inside wrap_socket on the raw socket's 1 s per-call timeout: ~6 reads and
# writes of the network plus ECDHE and RSA-2048 in mbedTLS (about 1 s on a 240 MHz ESP32).
TLS_HANDSHAKE_MS = 10000
WAIT_SLICE_MS = 2000  # a poll of at most 1 s, then one socket call on the board's 1 s timeout
# One flash operation (an append, a rename or a delete) on littlefs: at most 4 block erases (a new
# data block, a metadata pair compacted) at the SPI NOR datasheet maximum of 400 ms per 4 KB
# sector (typically 45 ms), plus page programs.
FLASH_OP_MS = 1700
IDLE_SLEEP_MS = 1000  # the loop waits at most 1 s in one sleep (link.service)
# A measurement cycle, sensors in turn: BME280 reset (20 ms) and conversion (40 ms) deadlines, the
# BH1750 conversion (180 ms x MTreg / 69), and for each sensor its longest transaction timing out:
# the port waits 100 ms x (1 + bytes) for one (machine_i2c.c, the register byte counted), so the
# BME280's 26-byte calibration read takes 2.8 s and the BH1750's 2-byte result 0.3 s; the first
# failure ends that sensor's cycle; then a bus recovery and re-init, ~40 transactions.
I2C_BME280_WORST_MS = 100 * (1 + 1 + 26)
I2C_BH1750_WORST_MS = 100 * (1 + 2)
I2C_RECOVERY_MS = 50
I2C_TRAFFIC_MS = 200
WATCHDOG_MARGIN_MS = 1000  # the loop's own work between feeds: JSON, a garbage collection


def _numeric_host(host: str) -> bool:
    parts = host.split(".")
    if len(parts) != 4:
        return False
    for p in parts:
        if not p.isdigit() or int(p) > 255:
            return False
    return True


def unfed_waits(cfg: dict) -> list:
    """[(ms, what)] of every stretch of the firmware between two watchdog feeds, at its bound."""
    host, _port, tls = parse_broker(cfg["broker"])
    dns = 0 if _numeric_host(host) else DNS_MS
    ntp_dns = 0 if _numeric_host(cfg["ntp_host"]) else DNS_MS
    bh1750 = (180 * cfg["bh1750_mtreg"] + 68) // 69
    cycle = (20 + 40 + bh1750 + I2C_BME280_WORST_MS + I2C_BH1750_WORST_MS + 2 * I2C_RECOVERY_MS
             + I2C_TRAFFIC_MS)
    connect = CONNECT_MS + (TLS_HANDSHAKE_MS if tls else 0)
    return [
        (dns, "the DNS lookup of the broker (getaddrinfo has no timeout; give an IP address)"),
        (ntp_dns + NTP_ANSWER_MS, "the NTP sync (its DNS lookup has no timeout; give ntp_host as an IP)"),
        (connect, "the TCP connect" + (" and TLS handshake" if tls else "")),
        (cycle + FLASH_OP_MS, "a measurement cycle with a failing I2C bus and an outbox write"),
        (FLASH_OP_MS + IDLE_SLEEP_MS, "an outbox write and the loop's idle sleep"),
        (WAIT_SLICE_MS, "a slice of a socket wait"),
    ]


def check_watchdog(cfg: dict) -> None:
    """The watchdog must outlast the longest stretch between two feeds, with a margin."""
    worst, what = max(unfed_waits(cfg))
    need_ms = worst + WATCHDOG_MARGIN_MS
    if cfg["watchdog_s"] * 1000 <= need_ms:
        raise ConfigError(
            "watchdog_s", "must be more than %d s: %s can take %.1f s without a feed"
            % (need_ms // 1000, what, worst / 1000)
        )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate(raw: object) -> dict:
    """Merge `raw` over the defaults and check every field; returns the effective config."""
    if not isinstance(raw, dict):
        raise ConfigError("(file)", "must be a JSON object")
    for key in raw:
        if key not in DEFAULTS:
            raise ConfigError(str(key), "unknown field (a typo?); known: " + ", ".join(sorted(DEFAULTS)))
    cfg: dict = {}
    for key in DEFAULTS:
        cfg[key] = raw[key] if key in raw else DEFAULTS[key]
    for key in ("device", "place"):
        if cfg[key] is None:
            raise ConfigError(key, "is required")
        if not valid_id(cfg[key]):
            raise ConfigError(key, "must be 1..64 of A-Z a-z 0-9 _ -, got " + repr(cfg[key]))
    for key in _STRINGS:
        if not isinstance(cfg[key], str):
            raise ConfigError(key, "must be a string")
    if not isinstance(cfg["broker"], str):
        raise ConfigError("broker", "must be a string URL")
    _host, _port, tls = parse_broker(cfg["broker"])
    if tls and cfg["tls_verify"] and not cfg["tls_ca_file"]:
        raise ConfigError(
            "tls_ca_file", "is required for mqtts:// with tls_verify (the ESP32 image has no CA bundle)"
        )
    for key in ("tls_verify", "e2e_ack"):
        if not isinstance(cfg[key], bool):
            raise ConfigError(key, "must be true or false")
    for key in _RANGES:
        value = cfg[key]
        low, high = _RANGES[key]
        if key in _INTS:
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(key, "must be an integer, got " + repr(value))
        elif not _is_number(value):
            raise ConfigError(key, "must be a number, got " + repr(value))
        if not low <= value <= high:
            raise ConfigError(
                key, "must be between " + str(low) + " and " + str(high) + ", got " + str(value)
            )
    _check_wifi_and_pins(cfg)
    if cfg["backoff_max_s"] < cfg["backoff_min_s"]:
        raise ConfigError("backoff_max_s", "must be >= backoff_min_s")
    if "ack_timeout_max_s" not in raw and cfg["ack_timeout_s"] > cfg["ack_timeout_max_s"]:
        # A config written before the cap existed, or one that raised only the timeout: the cap follows
        # the timeout (no backoff beyond it), so a board updated in the field keeps its config.
        cfg["ack_timeout_max_s"] = cfg["ack_timeout_s"]
    if cfg["ack_timeout_max_s"] < cfg["ack_timeout_s"]:
        raise ConfigError("ack_timeout_max_s", "must be >= ack_timeout_s")
    # A cycle must fit both conversions (BH1750: 180 ms x MTreg/69 at most) with time left to send.
    min_interval = (180 * cfg["bh1750_mtreg"] / 69 + 100) / 1000
    if cfg["interval_s"] < min_interval:
        raise ConfigError(
            "interval_s", "must be at least %.2f s with bh1750_mtreg %d (sensor conversion time + sending)"
            % (min_interval, cfg["bh1750_mtreg"])
        )
    if cfg["bh1750_addr"] not in (0x23, 0x5C):
        raise ConfigError("bh1750_addr", "must be 35 (0x23, ADDR low) or 92 (0x5C, ADDR high)")
    check_watchdog(cfg)
    offsets = cfg["offsets"]
    if not isinstance(offsets, dict):
        raise ConfigError("offsets", "must be an object of metric -> number")
    for key in offsets:
        if key not in METRICS:
            raise ConfigError("offsets." + str(key), "unknown metric; known: " + ", ".join(METRICS))
        if not _is_number(offsets[key]):
            raise ConfigError("offsets." + key, "must be a number")
    if cfg["mqtt_password"] and not cfg["mqtt_user"]:
        raise ConfigError("mqtt_password", "given without mqtt_user")
    return cfg


def parse(text: str) -> dict:
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ConfigError("(file)", "is not valid JSON: " + str(exc))
    return validate(raw)


def load(path: str = FILE, extra: dict | None = None) -> dict:
    """The board's config, checked also against the board's files (the CA file must be there);
    `extra`: fields over the file's (a remote config, remote_config.py), checked with it."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        raise ConfigError("(file)", path + " not found on the board; copy one with `iot flash`")
    cfg = parse(text)
    if extra:
        cfg.update(extra)
        cfg = validate(cfg)
    import os

    st = os.statvfs(".")
    check_outbox_fits(cfg, st[0] * st[2])
    ca = cfg["tls_ca_file"]
    if ca and cfg["broker"].startswith("mqtts://") and cfg["tls_verify"]:
        try:
            with open(ca, "rb") as f:
                head = f.read(64)
        except OSError:
            raise ConfigError("tls_ca_file", repr(ca) + " is not on the board; copy it with `iot flash`")
        if not (head.startswith(b"-----BEGIN CERTIFICATE-----") or head[:1] == b"\x30"):
            raise ConfigError("tls_ca_file", repr(ca) + " is neither a PEM nor a DER certificate")
    return cfg
