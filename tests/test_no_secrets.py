"""No secret and no default password in the repository: every file git tracks (or would track).

The scanner reads each text file of ``git ls-files --cached --others
--exclude-standard`` (so a file not yet committed counts too, and ./secrets,
runtime/ and .env, which .gitignore keeps out, do not) and reports each line
that matches a rule. The tests of the scanner plant every kind of secret in
temporary files and show it is found; the last test runs it on the tree.

What is allowed is listed in :data:`ALLOWED`, each with its reason; the
patterns below are written so that this file does not match itself.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

_CHANGE_ME = r"change[-_ ]?me"
#: Passwords that ship as defaults somewhere (MinIO, Elasticsearch, Grafana, Postgres images and docs).
_DEFAULTS = "|".join(["admin", "administrator", "password", "passw0rd", _CHANGE_ME, "mini" + "oadmin", "elastic",
                      "kibana", "root", "toor", "secret", "123456", "12345678", "letmein", "sluice", "airflow",
                      "postgres", "guest"])

_KEYS = r"password|passwd|pwd|secret|api_?key"

RULES: dict[str, re.Pattern[str]] = {
    "private key": re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----"),
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b"),
    "AWS secret access key": re.compile(r"(?i)aws_?secret_?access_?key\W{0,4}[:=]\W{0,3}[A-Za-z0-9/+]{40}\b"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "Slack token": re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),
    "JSON Web Token": re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
    # A key naming a password given a default: quoted anywhere (as in a dict or JSON), or the whole
    # unquoted value of a YAML/env/ini line (password: admin); unquoted in Python it is a variable.
    "default password": re.compile(
        rf"(?i)\b(?:{_KEYS})\b[\"']?\s*[:=]\s*([\"'])(?:{_DEFAULTS})\1"
        rf"|^\s*-?\s*[\w.-]*\b(?:{_KEYS})\b[\"']?\s*[:=]\s*(?:{_DEFAULTS})\s*$"),
    # MinIO's default user and password (the word in lower case; the SDK class MinioAdmin is not it).
    "MinIO default credentials": re.compile(r"\bminioadmin\b"),
    "change-me placeholder": re.compile(rf"(?i){_CHANGE_ME}"),
    "Elasticsearch user with a literal password": re.compile(r"\belastic:(?![$%{}\s\"'])[^\s\"'@,)]{3,}"),
    "credentials in a URL": re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@\"'<>]*:(?![$%{}<\s])[^@\s\"'/<>]+@[\w.-]+"),
}


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    rule: str
    text: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.text.strip()[:120]}"


#: (path, rule) -> why it is not a secret. Keep this short: each entry is a hole in the net.
ALLOWED: dict[tuple[str, str], str] = {
    ("stack/compose.py", "change-me placeholder"): "the refusal check: it looks for exactly these placeholders",
    ("tests/stack/test_compose_secrets.py", "change-me placeholder"): "tests of the refusal check plant placeholders",
    ("tests/test_no_secrets.py", "change-me placeholder"): "this scanner: its rule and the placeholders it plants",
    ("docs/security.md", "change-me placeholder"): "documents the refusal check and quotes its message",
}


def scan_text(path: str, text: str) -> list[Finding]:
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        for rule, pattern in RULES.items():
            if rule == "default password" and path.endswith(".py"):
                match = pattern.search(line)
                hit = bool(match and match.group(1))  # Python: only the quoted form
            else:
                hit = bool(pattern.search(line))
            if hit and (path, rule) not in ALLOWED:
                out.append(Finding(path, number, rule, line))
    return out


def repository_files(root: Path) -> list[str]:
    result = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root, capture_output=True, check=True, timeout=60,
    )
    return sorted(p for p in result.stdout.decode().split("\0") if p)


def scan(root: Path) -> list[Finding]:
    out = []
    for rel in repository_files(root):
        path = root / rel
        if not path.is_file():
            continue  # deleted in the worktree, not yet in the index
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        out += scan_text(rel, data.decode("utf-8", "replace"))
    return out


def _git_repo(tmp_path: Path, files: dict[str, str]) -> Path:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, timeout=30)
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


# Planted secrets, built from parts so this file holds none of them whole.
PLANTED = {
    "private key": "-----BEGIN " + "EC PRIVATE KEY-----\nMHcCAQEEIB\n-----END EC PRIVATE KEY-----\n",
    "AWS access key id": "aws_access_key_id = " + "AKIA" + "Q3EGRIMPLANTED7X" + "\n",
    "AWS secret access key": "AWS_SECRET_ACCESS_KEY=" + "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "PLANTED123" + "\n",
    "GitHub token": "token: " + "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8" + "\n",
    "Slack token": "webhook " + "xoxb-" + "123456789012-abcdefABCDEF" + "\n",
    "Google API key": "key=" + "AIza" + "SyA-planted_planted_planted_plant12" + "\n",
    "JSON Web Token": "Authorization: Bearer " + "eyJhbGciOiJIUzI1NiJ9" + ".eyJzdWIiOiJzbHVpY2UifQ" + ".c2lnbmF0dXJlX3BsYW50ZWQ" + "\n",
    "default password": "    pass" + "word: admin\n",
    "MinIO default credentials": "MINIO_ROOT_USER=minio" + "admin\n",
    "change-me placeholder": "ELASTIC_PASSWORD=change" + "me\n",
    "Elasticsearch user with a literal password": "curl -u elastic" + ":hunter22 http://localhost:9200\n",
    "credentials in a URL": "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=postgresql://airflow" + ":hunter22@postgres/airflow\n",
}


@pytest.mark.parametrize("rule", sorted(PLANTED))
def test_the_scanner_finds_each_kind_of_planted_secret(tmp_path, rule):
    repo = _git_repo(tmp_path, {"docs/clean.md": "nothing here\n", "docker-compose.yaml": "x: 1\n" + PLANTED[rule]})
    found = scan(repo)
    assert [(f.path, f.line) for f in found if f.rule == rule] == [("docker-compose.yaml", 2)], found
    assert not [f for f in found if f.path == "docs/clean.md"]


def test_every_rule_has_a_planted_secret():
    assert set(PLANTED) == set(RULES)


@pytest.mark.parametrize("text", [
    'curl -K - <<< "user = \\"elastic:%s\\""',  # a format, filled from a secret at run time
    'redis://:%s@redis:6379/0',
    '-u "elastic:$$ELASTIC_PASSWORD"',
    'MINIO_ROOT_PASSWORD_FILE: minio_root_password',
    'password: "${GRAFANA_ADMIN_PASSWORD}"',
    's3://sluice-landing/raw/',
    "password=c['password']",
    'the password is generated into runtime/ on first start',
])
def test_the_scanner_leaves_references_to_secrets_alone(text):
    assert scan_text("docs/x.md", text + "\n") == []


def test_a_default_password_in_python_is_found_only_as_a_literal():
    assert [f.rule for f in scan_text("x.py", 'login(user, "pass' 'word": "admin")\n')] == ["default password"]
    assert [f.rule for f in scan_text("x.py", "conn = {'api_key': 'sec" "ret'}\n")] == ["default password"]
    assert scan_text("x.py", "self.password = password\n") == []
    assert [f.rule for f in scan_text("x.yaml", "  pass" "word = admin\n")] == ["default password"]


def test_ignored_files_are_not_scanned_and_untracked_ones_are(tmp_path):
    repo = _git_repo(tmp_path, {
        ".gitignore": "/secrets/\n/.env\n",
        "secrets/postgres_password": PLANTED["credentials in a URL"],
        ".env": PLANTED["change-me placeholder"],
        "new_file.py": PLANTED["private key"],
    })
    assert {f.path for f in scan(repo)} == {"new_file.py"}


def test_an_allowed_pair_is_only_that_file_and_that_rule():
    text = "if PLACEHOLDER := 'change" + "-me': pass\n"
    assert scan_text("stack/compose.py", text) == []
    assert [f.rule for f in scan_text("stack/other.py", text)] == ["change-me placeholder"]
    assert [f.rule for f in scan_text("stack/compose.py", PLANTED["private key"])] == ["private key"]


def test_the_repository_holds_no_secret_and_no_default_password():
    found = scan(REPO)
    assert not found, "secrets or default passwords in the repository:\n" + "\n".join(map(str, found))
