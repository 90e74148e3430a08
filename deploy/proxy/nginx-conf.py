#!/usr/bin/env python3
"""Writes an nginx configuration that puts one gRPC address in front of several sageserve replicas.

    deploy/proxy/nginx-conf.py --listen=0.0.0.0:50050 \\
        gpu-a=10.0.0.5:50051 gpu-b=10.0.0.6:50051 > /etc/nginx/conf.d/sageserve-proxy.conf

Each replica is NAME=HOST:PORT, where NAME is the replica's --replica_name. A call carrying request
metadata `sageserve-session: <session id>` goes to the replica that the id names (ids of a server
run with --replica_name=NAME start with "NAME-<16 hex digits>."); every other call (stateless
Attend, GetServerInfo, CreateSession, ListSessions, the registry) goes to the replica with the
fewest of this proxy's calls open. docs/DEPLOY.md, "A gRPC proxy in front", says what clients see
when a replica is down or unknown.

The default output is a file for nginx's http block (Debian's nginx.conf includes
/etc/nginx/conf.d/*.conf there). --main writes a whole nginx.conf instead whose pid file, logs and
temporary directories are relative to nginx's prefix, for a proxy run by any user:
`nginx -p DIR -c DIR/nginx.conf -g 'daemon off;'`. Written for nginx 1.22 (Debian 12) and later.
Python 3 only, no packages.
"""
from __future__ import annotations

import argparse
import re
import sys
from typing import List, Tuple

# The server's own rule (SessionStore::CheckReplicaName).
NAME = re.compile(r"[a-z0-9-]{1,40}")
# host:port, [v6]:port
ADDRESS = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})")

SNIPPET = """\
# sageserve gRPC proxy (nginx {min_version}+), written by deploy/proxy/nginx-conf.py:
#   {command}
# Regenerate rather than edit: each replica appears three times below.
#
# A call whose metadata `sageserve-session` holds a session id goes to the replica the id names;
# every other call to any replica (least_conn). docs/DEPLOY.md, "A gRPC proxy in front".

# 1. The replica name at the start of the id: "<name>-<16 hex digits>.<device>.<random>".
#    No header: "". A value that is not such an id: "?" (answered UNAVAILABLE below).
map $http_sageserve_session $sageserve_replica {{
    "" "";
    "~^(?<sageserve_name>[a-z0-9-]{{1,40}})-[0-9a-f]{{16}}\\." $sageserve_name;
    default "?";
}}

# 2. Where that replica listens. A name no replica here has: "" (answered UNAVAILABLE below).
map $sageserve_replica $sageserve_upstream {{
{replica_map}
}}

# Calls without a session: the replica with the fewest calls open from this proxy. A replica that
# refuses the connection is set aside for 10 s (fail_timeout) and the call goes to the next one
# (before a byte of it was sent, so nothing runs twice).
upstream sageserve_any {{
    least_conn;
{any_servers}
    keepalive 32;
}}
{replica_upstreams}
# The access log's gRPC status: from the replica's trailers, else from the headers of a
# trailers-only answer (the replica's errors, and this proxy's own below).
map $upstream_trailer_grpc_status $sageserve_grpc_status {{
    "" $sent_http_grpc_status;
    default $upstream_trailer_grpc_status;
}}
log_format sageserve_grpc '$remote_addr [$time_local] "$request" $status grpc-status=$sageserve_grpc_status '
                          'replica="$sageserve_replica" upstream=$upstream_addr $request_time s';

server {{
    listen {listen} http2;
    {access_log}

    # Requests as large as the replicas take (--max_message_bytes, 512 MiB by default).
    client_max_body_size 0;
    client_body_buffer_size 256k;
    grpc_buffer_size 256k;
    # Streams (AttendStream, AttendSessionStream) may sit idle between requests for long; these
    # are the longest gaps between two reads from the client and from the replica.
    client_body_timeout 1h;
    grpc_read_timeout 1h;
    grpc_send_timeout 1h;
    # A replica that does not accept a connection within this fails the call (UNAVAILABLE below).
    grpc_connect_timeout 5s;
    grpc_socket_keepalive on;
    # gRPC clients keep one connection for many calls: do not close it after nginx's default 1000
    # requests or 75 s idle, and let a client have many calls open on it.
    keepalive_requests 1000000;
    keepalive_timeout 10m;
    http2_max_concurrent_streams 512;

    location / {{
        if ($sageserve_upstream = "") {{
            return 421;  # answered by @sageserve_no_replica
        }}
        grpc_pass grpc://$sageserve_upstream;
    }}

    # gRPC errors rather than HTTP pages (a gRPC client prefers grpc-status to the HTTP status).
    error_page 421 = @sageserve_no_replica;
    error_page 502 503 504 = @sageserve_unreachable;
    location @sageserve_no_replica {{
        default_type application/grpc;
        add_header grpc-status 14 always;
        add_header grpc-message "sageserve proxy: no replica '$sageserve_replica' here (sageserve-session must be the id of a session of a listed replica, one run with --replica_name)" always;
        return 204;
    }}
    location @sageserve_unreachable {{
        default_type application/grpc;
        add_header grpc-status 14 always;
        add_header grpc-message "sageserve proxy: no answer from $upstream_addr (replica '$sageserve_replica'; empty: any); it is down, restarting or unreachable" always;
        return 204;
    }}
}}
"""

# Around the snippet for --main: nothing outside the prefix, so it runs as any user.
MAIN = """\
# A whole nginx.conf: run as `nginx -p PREFIX -c PREFIX/nginx.conf -g 'daemon off;'`. Relative
# paths are under PREFIX.
worker_processes {workers};
pid nginx.pid;
error_log error.log {error_level};

events {{
    worker_connections 4096;
}}

http {{
    client_body_temp_path client_body_temp;
    proxy_temp_path proxy_temp;
    fastcgi_temp_path fastcgi_temp;
    uwsgi_temp_path uwsgi_temp;
    scgi_temp_path scgi_temp;

{snippet}}}
"""


def parse_replica(text: str) -> Tuple[str, str]:
    name, sep, address = text.partition("=")
    if not sep or not NAME.fullmatch(name):
        raise ValueError(f"replica {text!r}: want NAME=HOST:PORT with NAME 1 to 40 of a-z, 0-9 and '-' "
                         "(the server's --replica_name)")
    m = ADDRESS.fullmatch(address)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ValueError(f"replica {text!r}: {address!r} is not HOST:PORT")
    return name, address


def indent(text: str, by: str) -> str:
    return "".join(by + line if line.strip() else line for line in text.splitlines(True))


def render(replicas: List[Tuple[str, str]], listen: str, main: bool, access_log: str, command: str,
           workers: int, error_level: str) -> str:
    rows = [('""', "sageserve_any")] + [(n, f"sageserve_replica_{n}") for n, _ in replicas] + [("default", '""')]
    width = max(len(key) for key, _ in rows)
    replica_map = "\n".join(f"    {key:<{width}} {value};" for key, value in rows)
    any_servers = "\n".join(f"    server {a};" for _, a in replicas)
    # One server per group: nginx then never marks it failed, and each call tries it again.
    replica_upstreams = "".join(
        f"\nupstream sageserve_replica_{n} {{\n    server {a};\n    keepalive 8;\n}}\n" for n, a in replicas)
    snippet = SNIPPET.format(min_version="1.22", command=command, replica_map=replica_map,
                             any_servers=any_servers, replica_upstreams=replica_upstreams, listen=listen,
                             access_log="access_log off;" if access_log == "off" else
                             f"access_log {access_log} sageserve_grpc;")
    if not main:
        return snippet
    return MAIN.format(workers=workers if workers > 0 else "auto", error_level=error_level,
                       snippet=indent(snippet, "    "))


def main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("replicas", nargs="+", metavar="NAME=HOST:PORT",
                   help="each replica: its --replica_name and its gRPC address")
    p.add_argument("--listen", default="0.0.0.0:50050", help="the proxy's address (default %(default)s)")
    p.add_argument("--main", action="store_true",
                   help="a whole nginx.conf with every path relative to nginx's -p prefix (default: a "
                        "file for the http block, e.g. /etc/nginx/conf.d/sageserve-proxy.conf)")
    p.add_argument("--access_log", default=None,
                   help="access log path, or 'off' (default: /var/log/nginx/sageserve-proxy.log; "
                        "with --main, access.log under the prefix)")
    p.add_argument("--workers", type=int, default=0, help="--main: worker processes (default 0: auto)")
    p.add_argument("--error_level", default="warn", help="--main: error_log level (default %(default)s)")
    p.add_argument("-o", "--output", default="-", help="file to write (default: standard output)")
    args = p.parse_args(argv)
    try:
        replicas = [parse_replica(r) for r in args.replicas]
    except ValueError as e:
        p.error(str(e))
    names = [n for n, _ in replicas]
    if len(set(names)) != len(names):
        p.error("each replica name may appear once")
    if not ADDRESS.fullmatch(args.listen):
        p.error(f"--listen {args.listen!r} is not HOST:PORT")
    access_log = args.access_log or ("access.log" if args.main else "/var/log/nginx/sageserve-proxy.log")
    # How to write it again (the output file aside).
    command = " ".join(["deploy/proxy/nginx-conf.py"] + (["--main"] if args.main else []) +
                       [f"--listen={args.listen}"] + ([f"--access_log={args.access_log}"] if args.access_log else []) +
                       args.replicas)
    text = render(replicas, args.listen, args.main, access_log, command, args.workers, args.error_level)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
