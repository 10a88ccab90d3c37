"""gameguard.grpc is an optional integration: ``import gameguard`` never loads grpcio, and
without grpcio the module says which extra to install."""
from __future__ import annotations

import subprocess
import sys


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)


def test_import_gameguard_does_not_load_grpc() -> None:
    out = run("import sys, gameguard\nprint(sorted(m for m in sys.modules if 'grpc' in m))")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_without_grpcio_the_error_names_the_extra() -> None:
    out = run("import sys\nsys.modules['grpc'] = None\nimport gameguard.grpc")
    assert out.returncode != 0
    assert "ImportError: gameguard.grpc needs grpcio: pip install 'gameguard[grpc]'" in out.stderr


def test_the_interceptors_import_and_type_check_as_grpcio_classes() -> None:
    out = run("import grpc, gameguard.grpc as g\n"
              "assert issubclass(g.ServerInterceptor, grpc.aio.ServerInterceptor)\n"
              "assert issubclass(g.SyncServerInterceptor, grpc.ServerInterceptor)\n"
              "assert issubclass(g.ClientInterceptor, grpc.aio.UnaryUnaryClientInterceptor)\n"
              "print(g.ServerInterceptor.__module__)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "gameguard.grpc.server"
