"""Bring the native stack up, down, and report it: the engine behind `iot stack`."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

from iot import log, topics
from iot.app.stack import install, probes, process
from iot.app.stack.config import StackConfig
from iot.app.stack.probes import ProbeFailed
from iot.app.stack.services import BY_NAME, KAFKA, SERVICES, Listener, Service, service_env
from iot.errors import IotError
from iot.kafka import KafkaConnection

_log = log.get("iot.stack")


class StackError(IotError):
    """The stack could not be brought to the asked state; the message names the service."""


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    name: str
    healthy: bool
    pid: int | None
    port: int
    detail: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


class Stack:
    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One `up` or `down` at a time per state folder: two racing `up`s would start twins."""
        self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
        with (self.cfg.state_dir / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _select(self, names: Iterable[str] | None) -> list[Service]:
        if names is None:
            return list(SERVICES)
        wanted = list(names)
        unknown = [n for n in wanted if n not in BY_NAME]
        if unknown:
            raise StackError(f"unknown service(s) {unknown}; known: {[s.name for s in SERVICES]}")
        return [s for s in SERVICES if s.name in wanted]

    def _probe(self, svc: Service) -> str | None:
        """None when healthy, else why not."""
        try:
            probes.tcp_open(self.cfg.host, svc.ports(self.cfg)[0])
            svc.probe(self.cfg)
        except (ProbeFailed, OSError) as exc:
            return str(exc)
        return None

    def _probe_listener(self, listener: Listener) -> tuple[str | None, str]:
        """(None, detail) when healthy, else (why not, why not)."""
        try:
            return None, listener.probe(self.cfg)
        except (ProbeFailed, OSError) as exc:
            return str(exc), str(exc)

    def status(self, names: Iterable[str] | None = None) -> list[ServiceStatus]:
        """One row per service, then one per further listener of it (the broker's TLS port)."""
        out = []
        for svc in self._select(names):
            tracked = process.read(svc.folder(self.cfg) / "pid")
            pid = tracked.pid if tracked else None
            why = self._probe(svc) if tracked else "not running"
            healthy = tracked is not None and why is None
            out.append(ServiceStatus(svc.name, healthy, pid, svc.ports(self.cfg)[0], why or "ok"))
            for listener in svc.listeners(self.cfg):
                failed, detail = self._probe_listener(listener) if tracked else ("not running", "not running")
                healthy = tracked is not None and failed is None
                out.append(ServiceStatus(listener.name, healthy, pid, listener.port, detail))
        return out

    def up(self, names: Iterable[str] | None = None) -> list[ServiceStatus]:
        """Start what is not running and wait until every service answers a real client.

        On any failure, every service this call started is stopped again and StackError names
        the service, with the tail of its log.
        """
        with self._locked():
            return self._up(self._select(names))

    def _up(self, selected: list[Service]) -> list[ServiceStatus]:
        install.ensure_all(self.cfg)
        self._restart_outdated(selected)
        to_start = [s for s in selected if process.read(s.folder(self.cfg) / "pid") is None]
        for svc in to_start:
            for port in svc.ports(self.cfg):
                if not port_free(self.cfg.host, port):
                    raise StackError(
                        f"{svc.name}: port {port} on {self.cfg.host} is already in use by another program; "
                        f"stop it or choose another port (see `iot stack --help` for the variables)"
                    )
        started: list[Service] = []
        try:
            for svc in selected:
                if svc in to_start:
                    self._start(svc)
                    started.append(svc)
                self._wait_healthy(svc)
            if KAFKA in selected:
                topics.ensure_topics(KafkaConnection(self.cfg.kafka_bootstrap))
        except BaseException:
            for svc in reversed(started):
                process.stop(svc.folder(self.cfg) / "pid")
            raise
        return self.status(s.name for s in selected)

    def _restart_outdated(self, selected: list[Service]) -> None:
        """Stop a running service that no longer matches this stack's configuration (SIGTERM: the
        broker saves its sessions first), so `_up` starts it again as configured now: one started
        with another command line (after a `git pull` brought a new FerretDB build, or a variable
        such as IOT_KAFKA_HEAP changed), or whose own check says so (a broker started before the TLS
        listener existed gains it this way, on the next `up`)."""
        for svc in selected:
            folder = svc.folder(self.cfg)
            tracked = process.read(folder / "pid")
            if tracked is None:
                continue
            try:
                why = _argv_changed(process.argv_of(tracked.pid), svc.argv(self.cfg, folder))
                why = why or svc.outdated(self.cfg, folder)
            except (OSError, IotError) as exc:
                raise StackError(f"{svc.name}: checking its configuration failed: {exc}") from exc
            if why is not None:
                _log.info("service_restarting", service=svc.name, reason=why)
                process.stop(folder / "pid")

    def _start(self, svc: Service) -> None:
        folder = svc.folder(self.cfg)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            svc.prepare(self.cfg, folder)
        except (OSError, RuntimeError, IotError) as exc:
            raise StackError(f"{svc.name}: preparing its configuration failed: {exc}") from exc
        tracked = process.start(svc.argv(self.cfg, folder), svc.marker, folder, env=service_env())
        _log.info("service_started", service=svc.name, pid=tracked.pid, log=folder / "log")

    def _wait_healthy(self, svc: Service) -> None:
        folder = svc.folder(self.cfg)
        started = time.monotonic()
        deadline = started + svc.start_timeout
        why: str | None = "not probed"
        while time.monotonic() < deadline:
            tracked = process.read(folder / "pid")
            if tracked is None:
                raise StackError(
                    f"{svc.name} exited during start-up; last lines of {folder / 'log'}:\n"
                    f"{process.tail(folder / 'log')}"
                )
            why = self._probe(svc)
            if why is None:
                try:
                    svc.ready(self.cfg)
                except (ProbeFailed, OSError) as exc:
                    why = f"getting ready: {exc}"
            for listener in svc.listeners(self.cfg) if why is None else []:
                why, _detail = self._probe_listener(listener)
                if why is not None:
                    why = f"{listener.name}: {why}"
                    break
            if why is None:
                _log.info("service_healthy", service=svc.name, seconds=f"{time.monotonic() - started:.1f}")
                return
            time.sleep(0.25)
        raise StackError(
            f"{svc.name} did not become healthy in {svc.start_timeout:.0f}s ({why}); last lines of "
            f"{folder / 'log'}:\n{process.tail(folder / 'log')}"
        )

    def kill(self, name: str) -> int | None:
        """SIGKILL one service (fault tests on a private stack); `up([name])` brings it back on the
        same data. Returns the killed pid, None when it was not running."""
        (svc,) = self._select([name])
        with self._locked():
            pid = process.kill(svc.folder(self.cfg) / "pid")
        if pid is not None:
            _log.info("service_killed", service=svc.name, pid=pid, signal="SIGKILL")
        return pid

    def pid(self, name: str) -> int | None:
        """The running service's pid, None when it is not running."""
        (svc,) = self._select([name])
        tracked = process.read(svc.folder(self.cfg) / "pid")
        return tracked.pid if tracked else None

    def down(self, names: Iterable[str] | None = None) -> list[str]:
        with self._locked():
            return self._down(self._select(names))

    def _down(self, selected: list[Service]) -> list[str]:
        stopped = []
        for svc in reversed(selected):
            if process.stop(svc.folder(self.cfg) / "pid"):
                _log.info("service_stopped", service=svc.name)
                stopped.append(svc.name)
        return stopped


def _argv_changed(running: list[str], wanted: list[str]) -> str | None:
    """Why a service started with `running` is not what `up` starts now (a new build of its binary, a
    changed option or variable), or None. An unreadable command line ([]) counts as unchanged."""
    if not running or running == wanted:
        return None
    for i, (old, new) in enumerate(zip(running, wanted, strict=False)):
        if old != new:
            return f"argument {i} was {old[:120]!r}, `up` now starts it with {new[:120]!r}"
    return f"started with {len(running)} arguments, `up` now passes {len(wanted)}"
