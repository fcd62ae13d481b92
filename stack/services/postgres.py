"""PostgreSQL from Debian's packages: Airflow's metadata database.

``apt-get install postgresql`` (``make bootstrap``) provides the server under
``/usr/lib/postgresql/<major>/bin``; the newest major there runs. The stack runs
its own cluster on its own port and data folder (``runtime/postgres/data``),
never the distribution's. PostgreSQL refuses to run as root: started by root it
runs as the system user ``postgres`` the package creates.

The cluster's only role is ``airflow`` with a generated password kept in
``runtime/postgres/credentials.json`` (mode 0600); it listens on loopback only
and requires that password (scram-sha-256), also from local users.
"""

from __future__ import annotations

from pathlib import Path

from stack.config import StackError
from stack.secrets import new_password, secret_json
from stack.service import Service

ROLE = "airflow"
DATABASE = "airflow"


def server_bin() -> Path:
    """``/usr/lib/postgresql/<newest major>/bin``; StackError when PostgreSQL is not installed."""
    majors = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "postgres").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not majors:
        raise StackError("postgres", "PostgreSQL is not installed (/usr/lib/postgresql/*/bin); run `make bootstrap`")
    return majors[-1]


class Postgres(Service):
    name = "postgres"
    port_names = ("postgres",)
    start_timeout = 60.0
    drop_root = True
    run_as = "postgres"

    @property
    def credentials_file(self) -> Path:
        # Beside the cluster, not in it: readable by us (root or the checkout's owner) only.
        return self.config.runtime / "postgres-credentials.json"

    def credentials(self) -> dict[str, str]:
        """Role, password and database; generated on first use, then kept (mode 0600)."""
        return secret_json(self.credentials_file,
                           lambda: {"user": ROLE, "password": new_password(), "database": DATABASE})

    def sqlalchemy_url(self) -> str:
        c = self.credentials()
        return f"postgresql+psycopg2://{c['user']}:{c['password']}@{self.config.host}:{self.port}/{c['database']}"

    def install(self) -> None:
        server_bin()

    def prepare(self) -> None:
        (self.dir / "run").mkdir(exist_ok=True)
        if (self.data_dir / "PG_VERSION").exists():
            return
        # initdb wants an empty folder it owns, mode 0700; the password goes in through a file.
        self.data_dir.chmod(0o700)
        pwfile = self.dir / "initdb-password"
        pwfile.write_text(self.credentials()["password"] + "\n")
        try:
            self.run_checked(
                self.as_service_user([
                    str(server_bin() / "initdb"), "-D", str(self.data_dir), "-U", ROLE, f"--pwfile={pwfile}",
                    "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8",
                ]),
                "initdb",
            )
        finally:
            pwfile.unlink(missing_ok=True)

    def command(self) -> list[str]:
        return [
            str(server_bin() / "postgres"), "-D", str(self.data_dir),
            "-h", self.config.host, "-p", str(self.port),
            # Its socket lives in our folder, not /run/postgresql (the distribution's cluster).
            "-k", str(self.dir / "run"),
            "-c", "max_connections=200",
            "-c", "shared_buffers=128MB",
            "-c", "log_min_messages=warning",
        ]

    def check_health(self) -> str:
        import psycopg2

        c = self.credentials()
        conn = psycopg2.connect(
            host=self.config.host, port=self.port, user=c["user"], password=c["password"],
            dbname="postgres", connect_timeout=3,
        )
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
                has_db = cur.fetchone() is not None
                cur.execute("SHOW server_version")
                version = cur.fetchone()[0]
        finally:
            conn.close()
        return f"PostgreSQL {version}, database {DATABASE} {'ready' if has_db else 'not created yet'}"

    def after_start(self) -> None:
        import psycopg2

        c = self.credentials()
        conn = psycopg2.connect(
            host=self.config.host, port=self.port, user=c["user"], password=c["password"], dbname="postgres",
        )
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
                if cur.fetchone() is None:
                    cur.execute(f"CREATE DATABASE {DATABASE} OWNER {ROLE}")
        finally:
            conn.close()
