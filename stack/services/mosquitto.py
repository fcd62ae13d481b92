"""Mosquitto, the MQTT broker, from Debian's package (``apt-get install mosquitto``, 2.0.11).

Secure by default:

* one listener, TLS (port ``mosquitto_tls``, default 8883), with the certificate
  the stack's CA signs for ``mosquitto`` (stack/tls.py); clients trust ``runtime/tls/ca.crt``.
  The plaintext port ``mosquitto`` (1883) is not bound unless
  ``SLUICE_MQTT_PLAINTEXT_DEMO=1``, and then on 127.0.0.1 only, with the same users and ACL;
* no anonymous clients: every client is a user of ``runtime/mosquitto/passwords``,
  hashed by ``mosquitto_passwd -U`` (PBKDF2-SHA512) from the user registry below;
* an ACL (``runtime/mosquitto/acl``): a device may publish to its own topic
  ``sluice/sensors/<device>`` and nothing else; only collector users may subscribe to
  (read) the sensor topics; the stack's health probe has no rights at all;
* ``use_username_as_clientid`` on every listener: the broker replaces the client id a
  client asks for by its user name, so no client can take over another's persistent
  session, the collector's included. Mosquitto 2.0 with a password file cannot refuse a
  client id by user (only the dynamic-security plugin binds ids to users, and it replaces
  the password and ACL files); renaming is what it enforces, and a collector's user name
  therefore is its client id (and its writer id in the landing zone).

The user registry is this folder (mode 0600 files, nothing committed):

* ``devices`` – one ``device:password`` line per device; the simulator reads it;
* ``collectors/<name>.password`` – one file per collector user holding its password,
  handed to the collector as ``SLUICE_MQTT_PASSWORD_FILE``;
* ``health.password`` – the health probe's user.

``python -m stack mqtt-user add|remove|list`` changes it (see :meth:`Mosquitto.add_user`);
a running broker rereads users and ACL on SIGHUP, which every change sends.
Persistence is on so that a persistent session's queued QoS 1 messages survive a
broker restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from include.contract import ContractError, check_device, check_writer
from include.sensors import SENSOR_TOPIC_PREFIX
from stack.config import StackConfig, StackError
from stack.secrets import new_password, write_private
from stack.service import Service, tail, which_or_fail
from stack.tls import server_cert

#: Largest MQTT packet the broker accepts, bytes (docker-compose's mosquitto.conf says the same).
#: It bounds what one client can make the broker and the collector hold; the collector
#: dead-letters payloads over its own, smaller ``max_payload_bytes`` (metadata only on Kafka).
MAX_PACKET_BYTES = 4 * 2**20

#: Set to 1 to also bind the plaintext port, on 127.0.0.1 only (a demo, or the TLS benchmark's reference).
PLAINTEXT_DEMO_ENV = "SLUICE_MQTT_PLAINTEXT_DEMO"
#: The user the stack's health probe connects as: no ACL entry, so it can neither publish nor read.
HEALTH_USER = "sluice-stack-health"
DEVICE, COLLECTOR = "device", "collector"
ROLES = (DEVICE, COLLECTOR)
#: What mosquitto logs when it starts rereading its configuration after SIGHUP.
_RELOAD_LINE = "Reloading config"


def device_topic(device: str) -> str:
    """The one topic ``device`` may publish to."""
    return f"{SENSOR_TOPIC_PREFIX}/{device}"


class Mosquitto(Service):
    name = "mosquitto"
    #: TLS first (the main port every client uses); the plaintext one is bound only for a demo.
    port_names = ("mosquitto_tls", "mosquitto")
    start_timeout = 20.0

    def __init__(self, config: StackConfig, *, plaintext_demo: bool | None = None) -> None:
        super().__init__(config)
        if plaintext_demo is None:
            plaintext_demo = os.environ.get(PLAINTEXT_DEMO_ENV, "") == "1"
        self.plaintext_demo = plaintext_demo

    # -- files ---------------------------------------------------------------------
    @property
    def conf_file(self) -> Path:
        return self.dir / "mosquitto.conf"

    @property
    def devices_file(self) -> Path:
        """``device:password`` lines, mode 0600: the device registry (the simulator reads it)."""
        return self.dir / "devices"

    @property
    def collectors_dir(self) -> Path:
        return self.dir / "collectors"

    @property
    def password_file(self) -> Path:
        """What mosquitto reads: the registry's users with hashed passwords."""
        return self.dir / "passwords"

    @property
    def acl_file(self) -> Path:
        return self.dir / "acl"

    @property
    def ca_file(self) -> Path:
        return server_cert(self.config, "mosquitto").ca

    def collector_password_file(self, name: str) -> Path:
        """The file holding collector user ``name``'s password (give it as ``--mqtt-password-file``)."""
        return self.collectors_dir / f"{name}.password"

    @property
    def _health_file(self) -> Path:
        return self.dir / "health.password"

    # -- the user registry -----------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self):
        """One change of the registry at a time (the CLI, the stack and tests may race)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "users.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def devices(self) -> dict[str, str]:
        """Device id -> password, from the devices file (empty when there is none)."""
        try:
            text = self.devices_file.read_text()
        except FileNotFoundError:
            return {}
        out = {}
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            name, sep, password = line.partition(":")
            if not sep or not password:
                raise StackError(self.name, f"{self.devices_file} line {lineno} is not device:password; "
                                            "fix or remove that line")
            out[name] = password
        return out

    def collectors(self) -> list[str]:
        return sorted(p.name.removesuffix(".password") for p in self.collectors_dir.glob("*.password"))

    def users(self) -> dict[str, str]:
        """User name -> role (``device`` or ``collector``); the health probe's user is not listed."""
        return {**{d: DEVICE for d in self.devices()}, **{c: COLLECTOR for c in self.collectors()}}

    def collector_password(self, name: str) -> str:
        return self.collector_password_file(name).read_text().strip()

    def health_password(self) -> str:
        if not self._health_file.exists():
            with contextlib.suppress(FileExistsError):  # a racing process made it first: use theirs
                write_private(self._health_file, new_password())
        return self._health_file.read_text().strip()

    @staticmethod
    def check_name(name: str, role: str) -> str:
        """``name`` when usable as a user of ``role``; else ValueError saying what is allowed.

        A device id is a level of its topic and a column of the landing zone; a collector's
        user name is its client id and writer id: both use :mod:`include.contract`'s rules,
        which also keep ``:`` (the password file's separator), ``/``, ``+`` and ``#`` out.
        """
        if role not in ROLES:
            raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")
        if name == HEALTH_USER:
            raise ValueError(f"{name!r} is the stack's health probe; choose another name")
        try:
            return check_device(name) if role == DEVICE else check_writer(name)
        except ContractError as exc:
            raise ValueError(f"MQTT user: {exc}") from None

    def add_user(self, name: str, role: str = DEVICE, password: str | None = None, *, replace: bool = False) -> str:
        """Add user ``name`` (or, with ``replace``, give it a new password); return the password.

        ``password`` None generates one (:func:`stack.secrets.new_password`). A running
        broker rereads its users before this returns.
        """
        self.check_name(name, role)
        if password is not None and (not password or any(c in password for c in "\n\r:") or password != password.strip()):
            raise ValueError("an MQTT password must be non-empty, without ':', line breaks or surrounding spaces")
        password = password if password is not None else new_password()
        with self._locked():
            existing = self.users().get(name)
            if existing is not None and not replace:
                raise ValueError(f"MQTT user {name!r} exists (a {existing}); use --replace to give it a new password")
            if existing is not None and existing != role:
                raise ValueError(f"MQTT user {name!r} is a {existing}, not a {role}; remove it first")
            if role == DEVICE:
                devices = self.devices()
                devices[name] = password
                self._write_devices(devices)
            else:
                write_private(self.collector_password_file(name), password + "\n", replace=True)
            self._apply()
        return password

    def remove_users(self, names: list[str]) -> list[str]:
        """Remove the users ``names``; return their roles. A running broker drops them before this returns.

        On the SIGHUP, Mosquitto 2.0.11 re-checks every open connection against the new
        password file: a removed user's connection (and one using a replaced password) is closed.
        """
        with self._locked():
            users = self.users()
            unknown = [n for n in names if n not in users]
            if unknown:
                raise ValueError(f"no MQTT user {', '.join(map(repr, unknown))}; "
                                 "`python -m stack mqtt-user list` shows them")
            devices = self.devices()
            for name in names:
                if users[name] == DEVICE:
                    del devices[name]
                else:
                    self.collector_password_file(name).unlink()
            self._write_devices(devices)
            self._apply()
        return [users[n] for n in names]

    def ensure_users(self, names: list[str], role: str) -> None:
        """Add the users of ``names`` that are missing (the stack's own collector and simulated devices)."""
        for name in names:
            self.check_name(name, role)
        with self._locked():
            have = self.users()
            clash = [n for n in names if have.get(n, role) != role]
            if clash:
                raise StackError(self.name, f"MQTT user(s) {', '.join(clash)} exist with another role than {role}")
            missing = [n for n in names if n not in have]
            if not missing:
                return
            if role == DEVICE:
                self._write_devices({**self.devices(), **{n: new_password() for n in missing}})
            else:
                for n in missing:
                    write_private(self.collector_password_file(n), new_password() + "\n", replace=True)
            self._apply()

    def _write_devices(self, devices: dict[str, str]) -> None:
        tmp = self.devices_file.with_suffix(".new")
        tmp.unlink(missing_ok=True)
        write_private(tmp, "".join(f"{d}:{p}\n" for d, p in sorted(devices.items())))
        os.replace(tmp, self.devices_file)

    def _apply(self) -> None:
        """Rewrite the password and ACL files from the registry; SIGHUP a running broker."""
        self._write_security()
        self.reload()

    def _write_security(self) -> None:
        """The hashed password file and the ACL, each replaced atomically.

        Passwords reach ``mosquitto_passwd`` only in a file (mode 0600) that ``-U``
        hashes in place, never on its command line (``-b`` would show them in ``ps``).
        """
        users = {HEALTH_USER: self.health_password(), **self.devices(),
                 **{c: self.collector_password(c) for c in self.collectors()}}
        plain = self.dir / "passwords.new"
        plain.unlink(missing_ok=True)
        write_private(plain, "".join(f"{u}:{p}\n" for u, p in users.items()))
        try:
            passwd = which_or_fail(self.name, "mosquitto_passwd", "/usr/bin/mosquitto_passwd")
            done = subprocess.run([passwd, "-U", str(plain)], capture_output=True, text=True)
            if done.returncode != 0:
                raise StackError(self.name, f"mosquitto_passwd -U failed ({done.returncode}): "
                                            f"{(done.stderr or done.stdout).strip()}")
            os.replace(plain, self.password_file)
        finally:
            plain.unlink(missing_ok=True)
        acl = ["# Written by `python -m stack` from the user registry; edits are replaced.",
               f"# {HEALTH_USER} has no entry: it may connect, nothing else.",
               "# Devices: each publishes to its own topic only (as `pattern write "
               f"{SENSOR_TOPIC_PREFIX}/%u`, but for device users alone).", ""]
        for device in sorted(self.devices()):
            acl += [f"user {device}", f"topic write {device_topic(device)}", ""]
        acl.append("# Collectors: read (subscribe to and receive) every device's topic, publish nothing.")
        for collector in self.collectors():
            acl += [f"user {collector}", f"topic read {SENSOR_TOPIC_PREFIX}/#", ""]
        tmp = self.dir / "acl.new"
        tmp.unlink(missing_ok=True)
        write_private(tmp, "\n".join(acl) + "\n")
        os.replace(tmp, self.acl_file)

    def reload(self, timeout: float = 10.0) -> bool:
        """SIGHUP a running broker and wait until it has reread users and ACL; False when not running.

        Mosquitto logs "Reloading config" and rereads the files in the same turn of its
        single-threaded loop, so a connection made after the line is judged by the new files.
        """
        pid = self.pid()
        if pid is None:
            return False
        offset = self._log_size()
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while not self._logged_since(offset, _RELOAD_LINE):
            if time.monotonic() > deadline:
                raise StackError(self.name, f"sent SIGHUP to pid {pid} but it logged no reload within {timeout:.0f} s",
                                 tail(self.log_file))
            time.sleep(0.02)
        return True

    def _log_size(self) -> int:
        try:
            return self.log_file.stat().st_size
        except FileNotFoundError:
            return 0

    def _logged_since(self, offset: int, text: str) -> bool:
        try:
            with self.log_file.open("rb") as fh:
                fh.seek(offset)
                return text.encode() in fh.read()
        except FileNotFoundError:
            return False

    # -- the service -----------------------------------------------------------------
    def install(self) -> None:
        which_or_fail(self.name, "mosquitto", "/usr/sbin/mosquitto")
        which_or_fail(self.name, "mosquitto_passwd", "/usr/bin/mosquitto_passwd")

    def prepare(self) -> None:
        cert = server_cert(self.config, "mosquitto")
        with self._locked():
            self._write_security()
        # One listener block each; use_username_as_clientid is per listener in 2.0.
        listeners = [f"listener {self.config.ports['mosquitto_tls']} {self.config.host}",
                     "use_username_as_clientid true",
                     f"certfile {cert.cert}", f"keyfile {cert.key}", "tls_version tlsv1.2"]
        if self.plaintext_demo:
            listeners += ["# SLUICE_MQTT_PLAINTEXT_DEMO=1: plaintext for a demo, on loopback only.",
                          f"listener {self.config.ports['mosquitto']} 127.0.0.1", "use_username_as_clientid true"]
        self.conf_file.write_text(
            "# Written by `python -m stack`; edits are replaced at the next start.\n"
            "per_listener_settings false\n"
            "allow_anonymous false\n"
            f"password_file {self.password_file}\n"
            f"acl_file {self.acl_file}\n"
            # Started as root, mosquitto would switch to user "mosquitto", which
            # cannot write our runtime folder; stay the user who started it.
            "user root\n"
            "persistence true\n"
            f"persistence_location {self.data_dir}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 1000000\n"
            f"max_packet_size {MAX_PACKET_BYTES}\n"
            # A file, not stdout: mosquitto flushes each line there (stdout is block-buffered into
            # the same log), and reload() waits for the reload line.
            f"log_dest file {self.log_file}\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            "log_timestamp_format %Y-%m-%dT%H:%M:%S\n"
            + "\n".join(listeners) + "\n"
        )

    def command(self) -> list[str]:
        return [which_or_fail(self.name, "mosquitto", "/usr/sbin/mosquitto"), "-c", str(self.conf_file)]

    def check_health(self) -> str:
        import paho.mqtt.client as mqtt

        connected = threading.Event()
        refused: list[str] = []

        def on_connect(c, u, f, rc, p) -> None:
            if rc.is_failure:
                refused.append(str(rc))
            connected.set()

        port = self.port
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=HEALTH_USER)
        client.tls_set(ca_certs=str(self.ca_file))
        client.username_pw_set(HEALTH_USER, self.health_password())
        client.on_connect = on_connect
        client.connect(self.config.host, port, keepalive=5)
        client.loop_start()
        try:
            if not connected.wait(3):
                raise TimeoutError("no CONNACK within 3 s")
        finally:
            client.disconnect()
            client.loop_stop()
        if refused:
            raise RuntimeError(f"broker refused the health user: {refused[0]}")
        return f"MQTT over TLS, CONNACK on {self.config.host}:{port}" + (
            f"; plaintext demo on 127.0.0.1:{self.config.ports['mosquitto']}" if self.plaintext_demo else "")
