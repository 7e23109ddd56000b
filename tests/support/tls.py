"""Throw-away TLS material for the security tests: a CA, a server certificate for 127.0.0.1, another CA."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # the CA that signed the server certificate
    wrong_ca: Path  # an unrelated CA: verification against it must fail
    server_cert: Path
    server_key: Path  # unencrypted PKCS#8


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_tls_files(directory: Path) -> TlsFiles:
    """Generate the files under ``directory`` with openssl (valid for two days)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("ca", "wrong-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=loom {name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=directory)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
             "-out", "server.csr", cwd=directory)  # fmt: skip
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "san.ext", "-out", "server.crt", cwd=directory)  # fmt: skip
    (directory / "server.key").chmod(0o600)
    return TlsFiles(*(directory / name for name in ("ca.crt", "wrong-ca.crt", "server.crt", "server.key")))
