"""The TLS-only, ACL-only Redis of hack/redis-tls.sh, as tests connect to it
(the `tls_redis` fixture in tests/conftest.py reads it from the environment)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tidings.api.settings import RedisConnection


@dataclass(frozen=True)
class TlsRedis:
    """The TLS-only, ACL-only Redis of hack/redis-tls.sh."""

    url: str
    username: str
    password: str
    ca_file: str
    client_cert_file: str
    client_key_file: str

    def env(self, *, client_cert: bool = False) -> dict[str, str]:
        """The environment a Tidings process connects with (as the chart sets it)."""
        env = {
            "REDIS_URL": self.url,
            "REDIS_USERNAME": self.username,
            "REDIS_PASSWORD": self.password,
            "REDIS_TLS_CA_FILE": self.ca_file,
        }
        if client_cert:
            env["REDIS_TLS_CERT_FILE"] = self.client_cert_file
            env["REDIS_TLS_KEY_FILE"] = self.client_key_file
        return env

    def ca_pem(self) -> str:
        return Path(self.ca_file).read_text()

    def connection(self, *, client_cert: bool = False) -> RedisConnection:
        return RedisConnection(
            url=self.url,
            username=self.username,
            password=self.password,
            ca_file=self.ca_file,
            cert_file=self.client_cert_file if client_cert else "",
            key_file=self.client_key_file if client_cert else "",
        )
