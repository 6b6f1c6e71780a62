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
    # A cycle must fit both conversions (BH1750: 180 ms x MTreg/69 at most) with time left to send.
    min_interval = (180 * cfg["bh1750_mtreg"] / 69 + 100) / 1000
    if cfg["interval_s"] < min_interval:
        raise ConfigError(
            "interval_s", "must be at least %.2f s with bh1750_mtreg %d (sensor conversion time + sending)"
            % (min_interval, cfg["bh1750_mtreg"])
        )
    if cfg["bh1750_addr"] not in (0x23, 0x5C):
        raise ConfigError("bh1750_addr", "must be 35 (0x23, ADDR low) or 92 (0x5C, ADDR high)")
    # A publish can block for puback_timeout_s per attempt; the watchdog must outlast the worst case.
    # Plus the 5 s connect timeout and a measurement cycle.
    worst = cfg["puback_timeout_s"] * (cfg["publish_retries"] + 1) + 6
    if cfg["watchdog_s"] < worst:
        raise ConfigError(
            "watchdog_s", "must be at least " + str(worst) + " s (publish retries would trip it)"
        )
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


def load(path: str = FILE) -> dict:
    """The board's config, checked also against the board's files (the CA file must be there)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        raise ConfigError("(file)", path + " not found on the board; copy one with `iot flash`")
    cfg = parse(text)
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
