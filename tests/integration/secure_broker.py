"""A Kafka broker that authenticates: SASL_SSL with SCRAM-SHA-512 (and OAUTHBEARER with
Kafka's unsecured token validator), certificate from its own certificate authority,
made at test time.

The same image as the other integration tests (``ANOMALYD_TEST_KAFKA_IMAGE``), configured
through its environment; the broker's keystore is copied into the container before it
starts. Clients use the EXTERNAL listener (SASL_SSL); the fixture itself creates the SCRAM
user through a second, PLAINTEXT listener (SETUP), as an operator would with
``kafka-configs``. ``openssl`` makes the certificates.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import UserScramCredentialUpsertion
from kafka.errors import KafkaError
from pydantic import SecretStr

from detector.config import KafkaSettings
from detector.kafka.admin import wait_until_ready
from detector.kafka.clients import client_options
from detector.sandbox.broker import BrokerUnavailable, free_port
from detector.sandbox.containerbroker import (
    KAFKA_PORT,
    advertised_host,
    kafka_container_env,
    resolve_image,
)

SETUP_PORT = 9094  # PLAINTEXT listener inside the container, for the fixture only
MECHANISM = "SCRAM-SHA-512"
_STORE_PASSWORD = "test-keystore"  # protects a throwaway test key; not a secret
_SECRETS = "/home/appuser/secrets"


@dataclass(frozen=True)
class Tls:
    ca: Path  # PEM: what clients trust
    keystore: Path  # PKCS#12: the broker's key and certificate
    crl: Path  # PEM: the CA's revocation list, revoking nothing
    crl_revoking_broker: Path  # PEM: the same, revoking the broker's certificate


def make_tls(workdir: Path, hosts: list[str]) -> Tls:
    """A certificate authority, a broker certificate for ``hosts`` (IPs or names) and
    revocation lists."""
    workdir.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=workdir, check=True, capture_output=True)

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=anomalyd test CA",
    )  # fmt: skip
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr",
        "-subj", "/CN=anomalyd test broker",
    )  # fmt: skip
    names = [f"IP:{h}" if h.replace(".", "").isdigit() else f"DNS:{h}" for h in hosts]
    (workdir / "san.cnf").write_text(f"subjectAltName={','.join(names)}\n")
    openssl(
        "x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-out", "broker.pem", "-extfile", "san.cnf",
    )  # fmt: skip
    openssl(
        "pkcs12", "-export", "-in", "broker.pem", "-inkey", "broker.key", "-certfile", "ca.pem",
        "-name", "broker", "-out", "broker.p12", "-passout", f"pass:{_STORE_PASSWORD}",
    )  # fmt: skip
    (workdir / "index.txt").write_text("")
    (workdir / "crlnumber").write_text("01\n")
    (workdir / "ca.cnf").write_text(
        "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\ncrlnumber = crlnumber\n"
        "default_md = sha256\ndefault_crl_days = 2\n"
    )
    ca = ("-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.pem")
    openssl("ca", *ca, "-gencrl", "-out", "crl.pem")
    openssl("ca", *ca, "-revoke", "broker.pem")
    openssl("ca", *ca, "-gencrl", "-out", "crl-revoked.pem")
    return Tls(
        workdir / "ca.pem", workdir / "broker.p12", workdir / "crl.pem", workdir / "crl-revoked.pem"
    )


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(data), 0o644, 1000, 1000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class SecureBroker:
    """A running SASL_SSL broker; :meth:`settings` gives a client's KafkaSettings."""

    def __init__(self, container: Any, host: str, port: int, setup_port: int, tls: Tls) -> None:
        self._container = container  # docker-py Container
        self.bootstrap = f"{host}:{port}"
        self.setup_bootstrap = f"{host}:{setup_port}"
        self.tls = tls

    def settings(self, username: str, password: str, **kw: Any) -> KafkaSettings:
        return KafkaSettings(
            bootstrap_servers=self.bootstrap,
            security_protocol="SASL_SSL",
            sasl_mechanism=MECHANISM,
            sasl_username=username,
            sasl_password=SecretStr(password),
            ssl_cafile=self.tls.ca,
            **kw,
        )

    def env(self, username: str, password: str) -> dict[str, str]:
        """The same settings as ``ANOMALYD_KAFKA__*`` variables, for a subprocess."""
        return {
            "ANOMALYD_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap,
            "ANOMALYD_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
            "ANOMALYD_KAFKA__SASL_MECHANISM": MECHANISM,
            "ANOMALYD_KAFKA__SASL_USERNAME": username,
            "ANOMALYD_KAFKA__SASL_PASSWORD": password,
            "ANOMALYD_KAFKA__SSL_CAFILE": str(self.tls.ca),
        }

    def add_user(self, username: str, password: str, timeout_s: float = 30) -> None:
        """Create a SCRAM user and wait until the EXTERNAL listener accepts it."""
        admin = KafkaAdminClient(bootstrap_servers=self.setup_bootstrap)
        try:
            errors = admin.alter_user_scram_credentials(
                [UserScramCredentialUpsertion(username, MECHANISM, password)]
            )
        finally:
            admin.close()
        assert errors.get(username) is None, errors
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client = KafkaAdminClient(**client_options(self.settings(username, password)))
                client.list_topics()
                client.close()
                return
            except KafkaError:
                if time.monotonic() > deadline:
                    raise

    def failed_logins(self) -> int:
        """How many failed authentications the broker logged so far."""
        return self.logs().count("Failed authentication with")

    def logs(self) -> str:
        return str(self._container.logs().decode(errors="replace"))

    def close(self) -> None:
        self._container.remove(force=True)


def start_secure_broker(image: str, workdir: Path, timeout_s: float = 120) -> SecureBroker:
    import docker
    import docker.errors

    host = advertised_host()
    loopback = host in ("127.0.0.1", "localhost")
    bind_ip = "127.0.0.1" if loopback else "0.0.0.0"
    port, setup_port = free_port(bind_ip), free_port(bind_ip)
    tls = make_tls(workdir, sorted({host, "127.0.0.1", "localhost"}))
    listener = "LISTENER_NAME_EXTERNAL_SCRAM___SHA___512_SASL_JAAS_CONFIG"  # "___" is "-"
    env = kafka_container_env(host, port) | {
        "KAFKA_LISTENERS": (
            f"EXTERNAL://0.0.0.0:{KAFKA_PORT},SETUP://0.0.0.0:{SETUP_PORT},"
            "INTERNAL://0.0.0.0:19092,CONTROLLER://0.0.0.0:19093"
        ),
        "KAFKA_ADVERTISED_LISTENERS": (
            f"EXTERNAL://{host}:{port},SETUP://{host}:{setup_port},INTERNAL://localhost:19092"
        ),
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": (
            "EXTERNAL:SASL_SSL,SETUP:PLAINTEXT,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT"
        ),
        "KAFKA_SASL_ENABLED_MECHANISMS": f"{MECHANISM},OAUTHBEARER",
        f"KAFKA_{listener}": "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        # Kafka's unsecured OAUTHBEARER validator: accepts unsigned JWTs (tests only).
        "KAFKA_LISTENER_NAME_EXTERNAL_OAUTHBEARER_SASL_JAAS_CONFIG": (
            "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;"
        ),
        "KAFKA_SSL_KEYSTORE_LOCATION": f"{_SECRETS}/broker.p12",
        "KAFKA_SSL_KEYSTORE_TYPE": "PKCS12",
        "KAFKA_SSL_KEYSTORE_PASSWORD": _STORE_PASSWORD,
        "KAFKA_SSL_KEY_PASSWORD": _STORE_PASSWORD,
    }
    client = docker.from_env()
    try:
        container = client.containers.create(
            resolve_image(image),
            name=f"anomalyd-test-kafka-sasl-{uuid.uuid4().hex[:8]}",
            environment=env,
            ports={
                f"{KAFKA_PORT}/tcp": (bind_ip, port),
                f"{SETUP_PORT}/tcp": (bind_ip, setup_port),
            },
        )
        try:
            tar = _tar({"secrets/broker.p12": tls.keystore.read_bytes()})
            container.put_archive("/home/appuser", tar)
            container.start()
            broker = SecureBroker(container, host, port, setup_port, tls)

            def died() -> str | None:
                container.reload()
                if container.status in ("exited", "dead"):
                    return "container exited:\n" + broker.logs()[-3000:]
                return None

            wait_until_ready(broker.setup_bootstrap, timeout_s, died)
        except BaseException:
            container.remove(force=True)
            raise
    except docker.errors.DockerException as exc:
        raise BrokerUnavailable(f"cannot start the SASL_SSL broker: {exc}") from exc
    finally:
        client.close()
    return broker
