"""sageserve.Cluster: one client over several sageserve replicas (docs/DEPLOY.md, "Routing").

    cluster = sageserve.Cluster(["10.0.0.5:50051", "10.0.0.6:50051"])   # or
    cluster = sageserve.Cluster("dns:///sageserve-headless.default.svc:50051")
    r = cluster.attend(q, k, v, causal=True)        # the least-loaded replica
    s = cluster.create_session(layers=32, ...)      # ... and every call of s goes to its owner

- Stateless calls (attend, selftest) go to the replica with the least load: the calls this client
  has in flight there plus the load the replica last reported (trailing metadata `sageserve-load`
  on every answer; GetServerInfo.load when a replica is first seen); ties go round robin. A replica
  that answers UNAVAILABLE is set aside for `down_s` and the call goes to the next one (an Attend
  may be repeated: it changes nothing on the server).
- A session is created on the least-loaded replica. Its id names the server instance holding it
  (GetServerInfo.instance), and all its calls go there; when that replica is gone the call raises
  SessionOwnerGoneError. attend_sessions splits a batch by owner.
- A `dns:///name:port` target (a Kubernetes headless Service) is resolved again every
  `resolve_every_s`; replicas that appear join, replicas that vanish stop taking new work.
- Registry calls go to any replica: in a cluster they share one registry.

Thread-safe; blocking (the asyncio client covers one server).
"""
from __future__ import annotations

import copy
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from sageserve import errors
from sageserve.client import Client
from sageserve.options import ClientOptions
from sageserve.session import Session, SessionOptions, StepResult

DNS_PREFIX = "dns:///"


@dataclass
class Replica:
    """One endpoint: its client, what this process has in flight there, what it last reported."""

    target: str
    client: Client
    instance: Optional[str] = None  # learned from GetServerInfo
    in_flight: int = 0
    reported_load: int = 0
    down_until: float = 0.0
    listed: bool = True  # False once DNS no longer names it: no new work, open sessions still go
    calls: int = field(default=0)  # answered calls (for tests and metrics)

    def score(self) -> int:
        return self.in_flight + self.reported_load


def _instance_of(session_id: str) -> str:
    # "<instance>.<device>.<random>": the server instance is the first component.
    return session_id.split(".", 1)[0]


class Cluster:
    def __init__(self, targets: Union[str, Sequence[str]], *, options: Optional[ClientOptions] = None,
                 down_s: float = 1.0, resolve_every_s: float = 5.0, **client_kwargs: Any) -> None:
        self._options = options
        self._client_kwargs = client_kwargs
        self._down_s = down_s
        self._resolve_every_s = resolve_every_s
        self._lock = threading.Lock()
        self._replicas: Dict[str, Replica] = {}
        self._next = 0
        self._dns: Optional[Tuple[str, int]] = None
        self._resolved_at = 0.0
        if isinstance(targets, str) and targets.startswith(DNS_PREFIX):
            host, _, port = targets[len(DNS_PREFIX):].rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"targets: expected dns:///name:port, got {targets!r}")
            self._dns = (host, int(port))
            self._resolve()
        else:
            names = [targets] if isinstance(targets, str) else list(targets)
            if not names:
                raise ValueError("targets: at least one endpoint")
            for t in names:
                self._add(t)

    # -- membership -------------------------------------------------------------------------------
    def _add(self, target: str) -> Replica:
        o = copy.copy(self._options) if self._options else ClientOptions()
        client = Client(target, options=o, **self._client_kwargs)
        replica = Replica(target, client)

        def on_load(load: int, r: Replica = replica) -> None:
            r.reported_load = load

        client.on_load = on_load
        self._replicas[target] = replica
        return replica

    def _resolve(self) -> None:
        assert self._dns is not None
        host, port = self._dns
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            if not self._replicas:
                raise errors.UnavailableError(f"{host}: cannot be resolved ({e})") from None
            return  # keep the last answer
        found = set()
        for family, _, _, _, addr in infos:
            found.add(f"[{addr[0]}]:{addr[1]}" if family == socket.AF_INET6 else f"{addr[0]}:{addr[1]}")
        with self._lock:
            for t in found:
                if t in self._replicas:
                    self._replicas[t].listed = True
                else:
                    self._add(t)
            for t, r in self._replicas.items():
                r.listed = t in found
            self._resolved_at = time.monotonic()

    def replicas(self) -> List[Replica]:
        """The replicas known now (for status pages and tests)."""
        if self._dns is not None and time.monotonic() - self._resolved_at > self._resolve_every_s:
            self._resolve()
        with self._lock:
            return list(self._replicas.values())

    # -- choosing ---------------------------------------------------------------------------------
    def _pick(self, exclude: Sequence[str] = ()) -> Replica:
        now = time.monotonic()
        candidates = [r for r in self.replicas() if r.listed and r.target not in exclude]
        if not candidates:
            raise errors.UnavailableError("no replica of the cluster can take the call")
        up = [r for r in candidates if r.down_until <= now] or candidates  # all down: try anyway
        with self._lock:
            self._next += 1
            best = min(up, key=lambda r: r.score())
            ties = [r for r in up if r.score() == best.score()]
            chosen = ties[self._next % len(ties)]
            chosen.in_flight += 1
            return chosen

    def _done(self, r: Replica, failed: bool) -> None:
        with self._lock:
            r.in_flight -= 1
            r.calls += 1
            if failed:
                r.down_until = time.monotonic() + self._down_s

    def _stateless(self, call: Callable[[Replica], Any]) -> Any:
        """`call(replica)` on the least-loaded replica, again on the next one while UNAVAILABLE."""
        tried: List[str] = []
        last: Optional[errors.UnavailableError] = None
        while True:
            try:
                r = self._pick(tried)
            except errors.UnavailableError:
                if last is not None:
                    raise last from None
                raise
            tried.append(r.target)
            try:
                result = call(r)
            except errors.UnavailableError as e:
                self._done(r, failed=True)
                last = e
                continue
            except BaseException:
                self._done(r, failed=False)
                raise
            self._done(r, failed=False)
            return result

    def _owner(self, session_id: str) -> Replica:
        instance = _instance_of(session_id)
        replicas = self.replicas()
        for r in replicas:
            if r.instance == instance:
                return r
        # Replicas not yet asked first, then those whose instance may be stale (a restart): each once.
        for r in sorted(replicas, key=lambda r: r.instance is not None):
            try:
                r.instance = r.client.info().instance
            except errors.SageServeError:
                continue
            if r.instance == instance:
                return r
        raise errors.SessionOwnerGoneError(
            f"session {session_id}: no replica of this cluster is server instance {instance} (it restarted, "
            f"was removed, or the session is another cluster's); create a new session", [session_id])

    # -- calls ------------------------------------------------------------------------------------
    def attend(self, q: Any, k: Any, v: Any, **kwargs: Any) -> Any:
        """Client.attend on the least-loaded replica."""
        return self._stateless(lambda r: r.client.attend(q, k, v, **kwargs))

    def selftest(self, recipes: Sequence[Union[str, int]] = ()) -> Any:
        return self._stateless(lambda r: r.client.selftest(recipes))

    def create_session(self, options: Optional[SessionOptions] = None, **kwargs: Any) -> Session:
        """A new session on the least-loaded replica; its calls then go to that replica."""
        opts = options or SessionOptions(**kwargs)

        def create(r: Replica) -> Session:
            session = r.client.create_session(opts)
            r.instance = _instance_of(session.id)  # later lookups by id need no round trip
            return session

        return self._stateless(create)

    def attend_sessions(self, layer: int, steps: Sequence[Tuple[Session, Any, Any, Optional[Any]]],
                        **kwargs: Any) -> List[StepResult]:
        """One AttendSession call per owner replica for the batch's `layer`; results in step order."""
        groups: Dict[str, List[int]] = {}
        for i, (s, _, _, _) in enumerate(steps):
            groups.setdefault(self._owner(s.id).target, []).append(i)
        results: List[Optional[StepResult]] = [None] * len(steps)
        for target, idx in groups.items():
            client = self._replicas[target].client
            for i, res in zip(idx, client.attend_sessions(layer, [steps[i] for i in idx], **kwargs)):
                results[i] = res
        return [r for r in results if r is not None]

    def client_for_session(self, session_id: str) -> Client:
        """The client of the replica holding `session_id` (SessionOwnerGoneError when none does)."""
        return self._owner(session_id).client

    def registry(self) -> Client:
        """A client of some replica, for the registry's calls (shared by the cluster's replicas)."""
        return self._stateless(lambda r: r.client)

    def close(self) -> None:
        with self._lock:
            replicas = list(self._replicas.values())
        for r in replicas:
            r.client.close()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["Cluster", "Replica"]
