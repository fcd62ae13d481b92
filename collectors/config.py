"""Configuration of the collectors: one frozen dataclass per collector, read from
flags and environment variables, validated once at start.

Each dataclass field is an option. :func:`option` attaches its help text; the
flag is ``--field-name`` and the environment variable ``SLUICE_FIELD_NAME``
(flags win over the environment, the environment over the default). A field
marked ``secret=True`` is never taken from the command line (it would show in
``ps``): it comes from ``SLUICE_<NAME>_FILE`` / ``--<name>-file`` naming a file
that holds the value, or from ``SLUICE_<NAME>`` for development; it is left out
of the config's repr, so logging a config never shows it.

A bad value raises :class:`ConfigError` whose message names the flag and the
environment variable, so the process fails at start and says what to fix.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from include.kafka import DEFAULT_MECHANISM, DEFAULT_PROTOCOL, SASL_MECHANISMS, SECURITY_PROTOCOLS

ENV_PREFIX = "SLUICE_"

T = TypeVar("T")


class ConfigError(ValueError):
    """Invalid configuration; the message names the option."""


def option(default: Any, help: str, *, secret: bool = False, choices: Sequence[str] | None = None) -> Any:
    # A secret is left out of the dataclass's repr (and so of str() and of any log line that formats the config).
    return dataclasses.field(default=default, repr=not secret,
                             metadata={"help": help, "secret": secret, "choices": choices})


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_of(name: str) -> str:
    return ENV_PREFIX + name.upper()


def describe(name: str) -> str:
    """How the user names an option: ``--landing-url / SLUICE_LANDING_URL``."""
    return f"{flag_of(name)} / {env_of(name)}"


def _convert(name: str, kind: str, raw: str) -> Any:
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind.startswith("tuple"):
            return tuple(p.strip() for p in raw.split(",") if p.strip())
        if kind == "Path":
            return Path(raw).expanduser()
        return raw
    except ValueError:
        raise ConfigError(f"{describe(name)}: {raw!r} is not a valid {kind}") from None


def _fmt_default(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(value) or "(none)"
    if value == "":
        return "(empty)"
    return str(value)


def build_parser(cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    # No abbreviations: "--mqtt-password VALUE" would otherwise pass for --mqtt-password-file and
    # put a secret on the command line (and into the "cannot read" error).
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        # No prefix matching: "--x-password VALUE" must not be taken as "--x-password-file VALUE".
        allow_abbrev=False,
    )
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta:
            continue
        if meta["secret"]:
            parser.add_argument(
                flag_of(f.name) + "-file",
                dest=f.name + "_file",
                metavar="PATH",
                help=f"{meta['help']} Read from this file (env {env_of(f.name)}_FILE; "
                f"or the value itself in {env_of(f.name)}). Default: unset.",
            )
            continue
        kind = str(f.type)
        text = f"{meta['help']} (env {env_of(f.name)}; default: {_fmt_default(f.default)})"
        if kind == "bool":
            parser.add_argument(flag_of(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag_of(f.name), dest=f.name, metavar=f.name.upper(), default=None, help=text)
    parser.add_argument("--log-level", default=None, help="Logging level (env SLUICE_LOG_LEVEL; default: INFO)")
    return parser


def resolve(cls: type[T], args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Field values from parsed flags, then the environment, then the defaults."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta:
            continue
        kind = str(f.type)
        if meta["secret"]:
            path = getattr(args, f.name + "_file", None) or env.get(env_of(f.name) + "_FILE")
            if path:
                try:
                    values[f.name] = Path(path).read_text().strip()
                except OSError as exc:
                    raise ConfigError(f"{flag_of(f.name)}-file / {env_of(f.name)}_FILE: cannot read {path}: {exc.strerror}") from None
            elif env.get(env_of(f.name)):
                values[f.name] = env[env_of(f.name)]
            continue
        raw = getattr(args, f.name, None)
        if raw is None:
            raw = env.get(env_of(f.name))
        if raw is None:
            continue
        value = raw if isinstance(raw, bool) else _convert(f.name, kind, raw)
        if meta["choices"] and value not in meta["choices"]:
            raise ConfigError(f"{describe(f.name)}: {value!r} is not one of {', '.join(meta['choices'])}")
        values[f.name] = value
    return values


def default_state_dir(collector: str) -> Path:
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "sluice" / collector


def default_host() -> str:
    return socket.gethostname().split(".")[0]


def require(condition: bool, name: str, message: str) -> None:
    """Raise ConfigError naming the option when ``condition`` is false."""
    if not condition:
        raise ConfigError(f"{describe(name)}: {message}")


class CliOptions:
    """Mixin of the collectors' frozen config dataclasses: ``from_args`` and nothing else.

    A subclass names its module in ``prog`` (``"collectors.host"``); the first
    paragraph of that module's docstring heads ``--help``.
    """

    prog = ""

    @classmethod
    def from_args(cls, argv: list[str] | None = None, environ: Mapping[str, str] | None = None):
        """Flags, then ``SLUICE_*`` environment, then defaults; validated (ConfigError names the option)."""
        doc = sys.modules[cls.__module__].__doc__ or ""
        parser = build_parser(cls, f"python -m {cls.prog}", doc.split("\n\n")[0])
        args = parser.parse_args(argv)
        config = cls(**resolve(cls, args, environ))
        config.validate()
        object.__setattr__(config, "_log_level", args.log_level)
        return config


# --- Kafka client security, shared by the collectors and the stream loader (issue 15) ---------


@dataclasses.dataclass(frozen=True)
class KafkaClientOptions:
    """How a program logs in to Kafka: SASL_SSL with SCRAM-SHA-512 unless told otherwise.

    The password is a secret option (``SLUICE_KAFKA_PASSWORD_FILE`` /
    ``--kafka-password-file``), never a flag. A subclass that has a
    ``kafka_bootstrap`` option calls :meth:`validate_kafka` at the end of its ``validate``.
    """

    kafka_security_protocol: str = option(DEFAULT_PROTOCOL, "Kafka security protocol.", choices=SECURITY_PROTOCOLS)
    kafka_sasl_mechanism: str = option(DEFAULT_MECHANISM, "Kafka SASL mechanism.", choices=SASL_MECHANISMS)
    kafka_username: str = option("", "Kafka user (SASL).")
    kafka_password: str = option("", "Kafka password (SASL).", secret=True)
    kafka_ca_file: str = option("", "CA certificate that signed the brokers' certificates (empty: the system's trust store).")

    def kafka_settings(self) -> dict[str, str]:
        """librdkafka settings for these options (``security.protocol``, ``sasl.*``, ``ssl.ca.location``)."""
        from include.kafka import security_settings

        return security_settings(self.kafka_security_protocol, mechanism=self.kafka_sasl_mechanism,
                                 username=self.kafka_username, password=self.kafka_password, ca_file=self.kafka_ca_file)

    def validate_kafka(self) -> None:
        """Raise ConfigError naming the option when Kafka is used and the login is incomplete."""
        if not getattr(self, "kafka_bootstrap", ""):
            return
        sasl = self.kafka_security_protocol.startswith("SASL_")
        require(not sasl or bool(self.kafka_username), "kafka_username",
                f"{self.kafka_security_protocol} needs a Kafka user (or --kafka-security-protocol PLAINTEXT "
                "for a broker without security)")
        require(not sasl or bool(self.kafka_password), "kafka_password",
                f"{self.kafka_security_protocol} needs the password of Kafka user {self.kafka_username!r}: "
                f"put it in a file named by {env_of('kafka_password')}_FILE or {flag_of('kafka_password')}-file")
        try:
            self.kafka_settings()
        except ValueError as exc:
            require(False, "kafka_ca_file", str(exc))
