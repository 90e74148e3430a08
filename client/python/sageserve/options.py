"""How a client connects: target, TLS, token, limits; the channel settings of the C++ client."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import grpc

DEFAULT_TARGET = "127.0.0.1:50051"
# Receive/send limit; gRPC's default of 4 MiB is far too small for attention tensors.
DEFAULT_MAX_MESSAGE_BYTES = 512 << 20


@dataclass
class TlsOptions:
    """PEM bytes. No root certs: the system roots. Client key and cert both set: mutual TLS."""

    root_certs: Optional[bytes] = None
    client_key: Optional[bytes] = None
    client_cert: Optional[bytes] = None

    @staticmethod
    def from_files(ca_file: Optional[str] = None, cert_file: Optional[str] = None,
                   key_file: Optional[str] = None) -> "TlsOptions":
        def read(path: Optional[str]) -> Optional[bytes]:
            if not path:
                return None
            with open(path, "rb") as f:
                return f.read()
        return TlsOptions(read(ca_file), read(key_file), read(cert_file))


@dataclass
class ClientOptions:
    target: str = DEFAULT_TARGET
    tls: Optional[TlsOptions] = None  # None: plaintext (loopback, trusted networks)
    # Access token of a server run with --token_file, sent as `authorization: Bearer <token>`.
    # None: $SAGESERVE_TOKEN when set.
    token: Optional[str] = None
    timeout_s: Optional[float] = 30.0  # per unary call; None: no deadline
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # Attempts per Attend (1..5): above 1, gRPC retries a full queue (after the server's pushback)
    # and UNAVAILABLE, as ClientOptions::max_attempts in C++.
    max_attempts: int = 1
    channel_args: List[Tuple[str, int]] = field(default_factory=list)
    # "auto" | "bytes" | "shared_memory" (sageserve.transport).
    transport: str = "auto"
    # Whether the server runs on this host; None: decided from the target (loopback, unix:).
    same_host: Optional[bool] = None
    shared_memory_key_prefix: str = "/sage"  # the server's --shared_memory_key_prefix
    max_regions: int = 4  # idle registered regions kept per kind and device

    def resolved_token(self) -> Optional[str]:
        token = self.token if self.token is not None else os.environ.get("SAGESERVE_TOKEN")
        if token is not None and any(c <= " " or c > "~" for c in token):
            raise ValueError("token: must be printable ASCII without spaces")
        return token or None

    def is_same_host(self) -> bool:
        if self.same_host is not None:
            return self.same_host
        return target_is_local(self.target)


def target_is_local(target: str) -> bool:
    """Loopback and Unix-socket targets are this host; anything else is assumed not to be."""
    t = target
    for scheme in ("dns:///", "ipv4:", "ipv6:", "dns:"):
        if t.startswith(scheme):
            t = t[len(scheme):]
    if t.startswith("unix:") or t.startswith("unix-abstract:"):
        return True
    host = t.rsplit(":", 1)[0] if not t.startswith("[") else t[1:t.find("]")]
    return host in ("localhost", "::1") or host.startswith("127.")


def channel_options(options: ClientOptions) -> Sequence[Tuple[str, object]]:
    if options.max_message_bytes <= 0 or options.max_message_bytes > 2**31 - 1:
        raise ValueError("max_message_bytes must be in (0, 2^31 - 1]")
    if not 1 <= options.max_attempts <= 5:
        raise ValueError(f"max_attempts must be in [1, 5] (gRPC's limit), got {options.max_attempts}")
    out: List[Tuple[str, object]] = [("grpc.max_send_message_length", options.max_message_bytes),
                                     ("grpc.max_receive_message_length", options.max_message_bytes)]
    if options.max_attempts > 1:
        # A full queue asks for a retry (pushback) and other RESOURCE_EXHAUSTED errors forbid one.
        config = {"methodConfig": [{
            "name": [{"service": "sageserve.v1.AttentionService", "method": "Attend"}],
            "retryPolicy": {"maxAttempts": options.max_attempts, "initialBackoff": "0.01s",
                            "maxBackoff": "0.5s", "backoffMultiplier": 2,
                            "retryableStatusCodes": ["RESOURCE_EXHAUSTED", "UNAVAILABLE"]}}]}
        out += [("grpc.service_config", json.dumps(config)), ("grpc.enable_retries", 1)]
    out += list(options.channel_args)
    return out


def credentials(options: ClientOptions) -> Optional[grpc.ChannelCredentials]:
    if options.tls is None:
        return None
    return grpc.ssl_channel_credentials(options.tls.root_certs, options.tls.client_key, options.tls.client_cert)


def make_channel(options: ClientOptions) -> grpc.Channel:
    creds = credentials(options)
    opts = channel_options(options)
    if creds is None:
        return grpc.insecure_channel(options.target, options=opts)
    return grpc.secure_channel(options.target, creds, options=opts)


def make_aio_channel(options: ClientOptions):
    creds = credentials(options)
    opts = channel_options(options)
    if creds is None:
        return grpc.aio.insecure_channel(options.target, options=opts)
    return grpc.aio.secure_channel(options.target, creds, options=opts)
