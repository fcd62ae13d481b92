"""Finding the JDK a service needs and fetching artifacts with Maven.

Java services come from Maven Central through `mvn` itself, so downloads land
in Maven's own cache (``~/.m2``) and are shared by every checkout.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

from include.anomaly.spark_env import java_major  # one reader of a JDK's release file
from stack.config import StackError


def find_jdk(service: str, minimum: int, maximum: int | None = None) -> Path:
    """The home of the newest installed JDK whose major version is in minimum..maximum.

    Looks at ``JAVA_HOME``, the ``java`` on PATH and ``/usr/lib/jvm/*``.
    Raises StackError naming what was found otherwise (a JDK newer than
    ``maximum`` is not "close enough": HBase fails on one in odd ways).
    """
    candidates: list[Path] = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]))
    java = shutil.which("java")
    if java:
        candidates.append(Path(os.path.realpath(java)).parent.parent)
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/jvm/*"))]
    seen: dict[Path, int] = {}
    for home in candidates:
        home = home.resolve()
        major = java_major(home)
        if major is not None and (home / "bin" / "java").exists():
            seen[home] = major
    top = maximum if maximum is not None else 10**6
    fit = sorted((major, str(home)) for home, major in seen.items() if minimum <= major <= top)
    if not fit:
        found = ", ".join(f"{h} (Java {m})" for h, m in seen.items()) or "none"
        wanted = f"a JDK {minimum} or newer" if maximum is None else f"a JDK between {minimum} and {maximum}"
        raise StackError(
            service,
            f"needs {wanted}; found {found}. Install one "
            f"(e.g. `apt-get install openjdk-{maximum or minimum}-jdk-headless`) or set JAVA_HOME",
        )
    return Path(fit[-1][1])


def _mvn(service: str, args: list[str], what: str, cwd: Path | None = None) -> None:
    mvn = shutil.which("mvn")
    if not mvn:
        raise StackError(service, "Maven (mvn) is not installed (run `make bootstrap`)")
    # Name the local repository: Maven takes ~ from the password database, not
    # $HOME, and the paths this module computes must be the ones Maven fills.
    repo = f"-Dmaven.repo.local={maven_local_repo()}"
    proc = subprocess.run([mvn, "-B", "-q", repo, *args], capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        out = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
        raise StackError(service, f"{what} failed: mvn {' '.join(args)}", out)


def maven_local_repo() -> Path:
    return Path(os.environ.get("MAVEN_LOCAL_REPO", Path.home() / ".m2" / "repository"))


def maven_artifact(service: str, group: str, artifact: str, version: str, packaging: str = "jar") -> Path:
    """Path of one artifact in the local Maven repository, fetched when missing."""
    path = (
        maven_local_repo() / group.replace(".", "/") / artifact / version
        / f"{artifact}-{version}.{packaging}"
    )
    if not path.exists():
        _mvn(
            service,
            ["dependency:get", f"-Dartifact={group}:{artifact}:{version}:{packaging}", "-Dtransitive=false"],
            f"downloading {group}:{artifact}:{version}",
        )
    if not path.exists():
        raise StackError(service, f"Maven reported success but {path} is missing")
    return path


def maven_classpath(service: str, pom: Path, out: Path) -> str:
    """Resolve the runtime classpath of ``pom`` (cached in ``out``)."""
    if not out.exists() or out.stat().st_mtime < pom.stat().st_mtime:
        out.parent.mkdir(parents=True, exist_ok=True)
        _mvn(
            service,
            ["-f", str(pom), "dependency:build-classpath", "-Dmdep.includeScope=runtime", f"-Dmdep.outputFile={out}"],
            f"resolving the classpath of {pom.name}",
        )
    classpath = out.read_text().strip()
    missing = [p for p in classpath.split(":") if not Path(p).exists()]
    if missing:
        out.unlink()
        raise StackError(service, f"classpath entries missing from the Maven cache: {missing[:3]}")
    return classpath
