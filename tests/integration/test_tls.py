"""Three raftnode processes over https with mutual TLS, certificates made here."""

from __future__ import annotations

import datetime
import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .cluster import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_ca(directory: Path, name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA; its certificate is written to ``<name>.pem``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def make_cert(
    directory: Path, name: str, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
) -> tuple[str, str]:
    """A certificate for 127.0.0.1, good for servers and clients; return (cert, key) paths."""
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


@pytest.fixture
def tls_cluster(tmp_path: Path) -> Iterator[tuple[Cluster, Path]]:
    ca = make_ca(tmp_path, "ca")
    node_cert, node_key = make_cert(tmp_path, "node", ca)
    client_cert, client_key = make_cert(tmp_path, "client", ca)
    cluster = Cluster(
        tmp_path,
        tls={"verify": str(tmp_path / "ca.pem"), "cert": (client_cert, client_key)},
        TLS_CERT=node_cert,
        TLS_KEY=node_key,
        TLS_CA=str(tmp_path / "ca.pem"),
        TLS_CLIENT_AUTH=True,
    )
    try:
        cluster.start()
        yield cluster, tmp_path
    finally:
        cluster.close()


def test_a_cluster_over_mutual_tls_elects_and_replicates(
    tls_cluster: tuple[Cluster, Path],
) -> None:
    cluster, directory = tls_cluster
    leader = cluster.leader()
    assert leader.address.startswith("https://")
    follower = next(n for n in cluster.running() if n is not leader)
    # Connections that never shake hands hold up neither the accepting thread nor others.
    silent = [socket.create_connection(("127.0.0.1", n.port)) for n in cluster.running() * 20]
    try:
        assert follower.do("kv.set", key="secure", value="yes", timeout=3)["ok"]  # forwarded
    finally:
        for sock in silent:
            sock.close()
    cluster.wait_applied()
    assert all(n.kv() == {"secure": "yes"} for n in cluster.running())
    url = f"{leader.address}/raft/status"
    plain = leader.address.replace("https://", "http://")
    with pytest.raises(requests.ConnectionError):
        requests.post(f"{plain}/raft/status", data=b"{}", timeout=3)
    with pytest.raises(requests.exceptions.SSLError):
        requests.post(url, data=b"{}", timeout=3)  # the node's CA is not the system's
    with pytest.raises((requests.exceptions.SSLError, requests.ConnectionError)):
        # no client certificate: mutual TLS refuses the connection
        requests.post(url, data=b"{}", timeout=3, verify=str(directory / "ca.pem"))
    other = make_ca(directory, "other-ca")
    stranger = make_cert(directory, "stranger", other)
    with pytest.raises((requests.exceptions.SSLError, requests.ConnectionError)):
        requests.post(url, data=b"{}", timeout=3, verify=str(directory / "ca.pem"), cert=stranger)
    assert leader.status()["state"] == "leader"
