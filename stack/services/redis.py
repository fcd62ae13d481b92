"""Redis from Debian's package (``apt-get install redis-server``): the Celery broker.

Only with ``SLUICE_EXECUTOR=celery``. The stack runs its own server on its own
port, loopback only, with data (an append-only file, so queued task messages
survive a restart) and log under ``runtime/redis/``. It requires a password
generated once into ``runtime/redis-credentials.json`` (mode 0600); the server
reads it from its config file ``runtime/redis/redis.conf`` (mode 0600, rewritten
at every start), never from its command line, where ``ps`` would show it.
"""

from __future__ import annotations

from pathlib import Path

from stack.config import StackConfig
from stack.secrets import new_password, secret_json, write_private
from stack.service import Service, which_or_fail

REDIS_SERVER = "/usr/bin/redis-server"



class Redis(Service):
    name = "redis"
    port_names = ("redis",)
    start_timeout = 30.0

    @classmethod
    def enabled(cls, config: StackConfig) -> bool:
        return config.executor == "celery"

    @property
    def credentials_file(self) -> Path:
        return self.config.runtime / "redis-credentials.json"

    @property
    def conf_file(self) -> Path:
        return self.dir / "redis.conf"

    def password(self) -> str:
        """The generated password; created on first use, then kept (mode 0600)."""
        return str(secret_json(self.credentials_file, lambda: {"password": new_password()})["password"])

    def broker_url(self, db: int = 0) -> str:
        """Celery's ``broker_url`` (token_urlsafe needs no quoting in a URL)."""
        return f"redis://:{self.password()}@{self.config.host}:{self.port}/{db}"

    def install(self) -> None:
        which_or_fail(self.name, "redis-server", REDIS_SERVER)

    def prepare(self) -> None:
        write_private(
            self.conf_file,
            "# Written by `python -m stack` (stack/services/redis.py); replaced at every start.\n"
            f"bind {self.config.host}\n"
            f"port {self.port}\n"
            "protected-mode yes\n"
            f"requirepass {self.password()}\n"
            "daemonize no\n"
            f"dir {self.data_dir}\n"
            "appendonly yes\n"
            "appendfsync everysec\n"
            # The stack's log file is the process's stdout (Service.start redirects it).
            'logfile ""\n'
            "loglevel notice\n"
            # A broker's queues must not be evicted to make room.
            "maxmemory-policy noeviction\n",
        )

    def command(self) -> list[str]:
        return [which_or_fail(self.name, "redis-server", REDIS_SERVER), str(self.conf_file)]

    def client(self):
        import redis

        return redis.Redis(host=self.config.host, port=self.port, password=self.password(), socket_timeout=3)

    def check_health(self) -> str:
        with self.client() as r:
            if not r.ping():
                raise RuntimeError("PING did not answer PONG")
            version = r.info("server")["redis_version"]
        return f"Redis {version} answers PING (password required) on {self.config.host}:{self.port}"
