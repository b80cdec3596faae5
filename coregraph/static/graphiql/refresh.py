"""Fetch the GraphiQL page's vendored files from the npm registry and record their sha256.

    python coregraph/static/graphiql/refresh.py

reads VERSIONS (file, package, version, path in the package), downloads each package with
``npm pack`` (npm checks the tarball against the registry's integrity hash), copies the named
file out of it next to this script and rewrites VERSIONS with the new sha256 of each file. To
move to another version, change it in VERSIONS first; the tests then check the served bytes
against the recorded hashes (tests/test_graphiql.py).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
VERSIONS = HERE / "VERSIONS"


def read_versions() -> tuple[list[str], list[list[str]]]:
    """(the comment lines, one [file, package, version, path, sha256] row per vendored file)."""
    comments: list[str] = []
    rows: list[list[str]] = []
    for line in VERSIONS.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            comments.append(line)
            continue
        fields = line.split()
        if len(fields) != 5:
            raise SystemExit(f"VERSIONS: expected 5 columns, got {line!r}")
        rows.append(fields)
    return comments, rows


def pack(package: str, version: str, into: Path) -> Path:
    """The package's tarball as the registry serves it (npm verifies its integrity)."""
    result = subprocess.run(
        ["npm", "pack", "--silent", "--pack-destination", str(into), f"{package}@{version}"],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return into / result.stdout.strip().splitlines()[-1]


def main() -> None:
    comments, rows = read_versions()
    tarballs: dict[tuple[str, str], Path] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            name, package, version, member, _ = row
            key = (package, version)
            if key not in tarballs:
                tarballs[key] = pack(package, version, Path(tmp))
            with tarfile.open(tarballs[key]) as archive:
                extracted = archive.extractfile(f"package/{member}")
                if extracted is None:
                    raise SystemExit(f"{package}@{version} has no file {member}")
                data = extracted.read()
            (HERE / name).write_bytes(data)
            row[4] = hashlib.sha256(data).hexdigest()
            print(f"{name}: {package}@{version} {member}, {len(data)} bytes", file=sys.stderr)
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [*comments]
    lines += ["  ".join(f.ljust(w) for f, w in zip(row, [*widths, 0], strict=True)) for row in rows]
    VERSIONS.write_text("\n".join(line.rstrip() for line in lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
