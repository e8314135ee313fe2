"""gRPC health probe for the image's HEALTHCHECK (no grpc_health_probe binary needed).

    python healthprobe.py [SERVICE] [--address HOST:PORT] [--timeout SECONDS]

Exits 0 when the server reports SERVICE (default: the readiness service "sandbox.v1.SandboxProvider")
as SERVING, 1 otherwise. The address defaults to the port of SANDBOX_LISTEN on loopback. When the server
uses TLS (SANDBOX_TLS_CERT_FILE set), the probe verifies it against SANDBOX_HEALTH_PROBE_CA_FILE (default:
the server's own certificate, right for self-signed ones) and, for mTLS, presents
SANDBOX_HEALTH_PROBE_CERT_FILE / SANDBOX_HEALTH_PROBE_KEY_FILE.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

READINESS_SERVICE = "sandbox.v1.SandboxProvider"
WILDCARDS = {"", "[::]", "0.0.0.0", "::"}


def default_address() -> str:
    host, _, port = os.environ.get("SANDBOX_LISTEN", "[::]:50051").rpartition(":")
    return f"{'127.0.0.1' if host in WILDCARDS else host}:{port}"


def open_channel(address: str) -> grpc.Channel:
    cert = os.environ.get("SANDBOX_TLS_CERT_FILE")
    if not cert:
        return grpc.insecure_channel(address)
    ca = Path(os.environ.get("SANDBOX_HEALTH_PROBE_CA_FILE", cert)).read_bytes()
    client_cert = os.environ.get("SANDBOX_HEALTH_PROBE_CERT_FILE")
    client_key = os.environ.get("SANDBOX_HEALTH_PROBE_KEY_FILE")
    credentials = grpc.ssl_channel_credentials(
        ca,
        Path(client_key).read_bytes() if client_key else None,
        Path(client_cert).read_bytes() if client_cert else None,
    )
    options = []
    if name := os.environ.get("SANDBOX_HEALTH_PROBE_SERVER_NAME"):
        options.append(("grpc.ssl_target_name_override", name))
    return grpc.secure_channel(address, credentials, options=options)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("service", nargs="?", default=READINESS_SERVICE, help='"" asks about the server as a whole')
    parser.add_argument("--address", default=default_address())
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args()
    with open_channel(args.address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as err:
            print(f"health check of {args.address} failed: {err.code().name} {err.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.service or '(server)'}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
