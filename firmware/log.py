"""Structured log lines on the console: `event key=value ...`; secret-looking keys are masked."""

_SECRET = ("password", "secret", "token", "key")


def _fmt(value: object) -> str:
    text = str(value)
    if text == "" or " " in text or "=" in text or '"' in text:
        return '"' + text.replace('"', "'") + '"'
    return text


def event(name: str, **fields: object) -> None:
    parts = [name]
    for key in fields:
        value = fields[key]
        for s in _SECRET:
            if s in key and value:
                value = "***"
                break
        parts.append(key + "=" + _fmt(value))
    print(" ".join(parts))
