"""The page template of `dvc plots show`, with Vega inline so that the page works offline.

    python .dvc/plots/vendor.py fetch   # npm pack the versions in vendor/MANIFEST, check sha256, rewrite
                                        # vendor/*.min.js and page.html (what `make vendor-plots` runs)
    python .dvc/plots/vendor.py build   # rewrite page.html from page.in.html and vendor/ (no network)
    python .dvc/plots/vendor.py check   # vendor/ matches MANIFEST and page.html is up to date; exit 1 if not

Why inline: dvc-render fills the template by text replacement and writes the page wherever `-o` points
(dvc_plots/ by default, below the current folder) without copying anything next to it, so no relative
<script src> can reach vendor/ from every page. The page is self-contained instead (about 830 kB).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENDOR = HERE / "vendor"
SOURCE = HERE / "page.in.html"
PAGE = HERE / "page.html"
MARK = "<!-- inline vendor/{} -->"
# dvc-render replaces these in the template; a script containing one, or "</script", would break the page.
FORBIDDEN = ("{plot_divs}", "{scripts}", "{refresh_tag}", "</script")


@dataclass(frozen=True)
class Build:
    package: str
    version: str
    file: str
    sha256: str


def read_manifest(path: Path = VENDOR / "MANIFEST") -> list[Build]:
    builds = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            fields = line.split()
            if len(fields) != 4:
                raise ValueError(f"{path}: line {i}: expected 'package version file sha256', got {line!r}")
            builds.append(Build(*fields))
    return builds


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(builds: list[Build]) -> None:
    """Download each package from the npm registry and write its checked build into vendor/."""
    with tempfile.TemporaryDirectory() as tmp:
        for b in builds:
            out = subprocess.run(["npm", "pack", f"{b.package}@{b.version}", "--json", "--pack-destination", tmp],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(f"npm pack {b.package}@{b.version} failed: {out.stderr.strip()[-2000:]}")
            tgz = Path(tmp) / json.loads(out.stdout)[0]["filename"]
            with tarfile.open(tgz) as tar:
                member = tar.extractfile(f"package/build/{b.file}")
                if member is None:
                    raise FileNotFoundError(f"{tgz.name}: no package/build/{b.file}")
                data = member.read()
            if sha256(data) != b.sha256:
                raise ValueError(f"{b.package}@{b.version} build/{b.file}: sha256 {sha256(data)}, MANIFEST says "
                                 f"{b.sha256}; if the version changed on purpose, update MANIFEST")
            (VENDOR / b.file).write_bytes(data)
            print(f"{b.package}@{b.version}: build/{b.file} ({len(data)} bytes, sha256 ok)")


def render_page(builds: list[Build]) -> str:
    """page.in.html with each marker line replaced by an inline <script> holding that vendored file."""
    page = SOURCE.read_text(encoding="utf-8")
    for b in builds:
        code = (VENDOR / b.file).read_text(encoding="utf-8")
        bad = [s for s in FORBIDDEN if s in code]
        if bad:
            raise ValueError(f"vendor/{b.file} contains {bad}: it cannot be inlined in the DVC template")
        mark = MARK.format(b.file)
        if page.count(mark) != 1:
            raise ValueError(f"{SOURCE.name}: expected the line {mark!r} once")
        page = page.replace(mark, f"<script>/* {b.package}@{b.version} build/{b.file}, vendored */\n{code}\n</script>")
    return page


def check(builds: list[Build]) -> list[str]:
    """What is out of date; empty when vendor/ matches MANIFEST and page.html matches both."""
    problems = [f"vendor/{b.file}: sha256 differs from MANIFEST ({b.package}@{b.version})"
                for b in builds if sha256((VENDOR / b.file).read_bytes()) != b.sha256]
    if not problems and PAGE.read_text(encoding="utf-8") != render_page(builds):
        problems.append(f"{PAGE.name} is not built from {SOURCE.name} and vendor/: run `python {Path(__file__).name} build`")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["fetch", "build", "check"])
    action = parser.parse_args().action
    builds = read_manifest()
    if action == "check":
        problems = check(builds)
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    if action == "fetch":
        fetch(builds)
    PAGE.write_text(render_page(builds), encoding="utf-8")
    print(f"wrote {PAGE} ({PAGE.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
