"""The real Codex CLI for the tests (tests/test_codex_cli.py): ``@openai/codex`` from npm, pinned.

    python -m tests.codex_cli install     # once: npm install into ~/.cache/vllm-gateway; seconds later

The npm package is a small launcher; the program is a static binary in the optional dependency
``@openai/codex-linux-x64`` (arm64 and macOS have their own). The tests run that binary directly,
so node is needed only to install. ``VLLM_GATEWAY_CACHE`` moves the cache, as for llama.cpp.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

VERSION = "0.169.0"
_PLATFORM_PACKAGES = {  # (system, machine) -> (npm package, vendor directory)
    ("Linux", "x86_64"): ("codex-linux-x64", "x86_64-unknown-linux-musl"),
    ("Linux", "aarch64"): ("codex-linux-arm64", "aarch64-unknown-linux-musl"),
    ("Darwin", "x86_64"): ("codex-darwin-x64", "x86_64-apple-darwin"),
    ("Darwin", "arm64"): ("codex-darwin-arm64", "aarch64-apple-darwin"),
}


def install_dir() -> Path:
    cache = Path(os.environ.get("VLLM_GATEWAY_CACHE", Path.home() / ".cache" / "vllm-gateway"))
    return cache / f"codex-{VERSION}"


def binary() -> Optional[Path]:
    """The installed Codex binary, or None."""
    package = _PLATFORM_PACKAGES.get((platform.system(), platform.machine()))
    if package is None:
        return None
    name, vendor = package
    path = install_dir() / "node_modules" / "@openai" / name / "vendor" / vendor / "bin" / "codex"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def installed_version(path: Path) -> str:
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=60)
    return out.stdout.strip()


def install() -> Path:
    found = binary()
    if found is not None and installed_version(found).endswith(VERSION):
        return found
    if (platform.system(), platform.machine()) not in _PLATFORM_PACKAGES:
        raise SystemExit(f"Codex {VERSION} has no npm binary for {platform.system()} {platform.machine()}")
    npm = shutil.which("npm") or _install_npm()
    target = install_dir()
    target.mkdir(parents=True, exist_ok=True)
    print(f"[codex] npm install @openai/codex@{VERSION} into {target}", flush=True)
    subprocess.run([npm, "install", "--prefix", str(target), "--no-audit", "--no-fund", "--no-save",
                    "--loglevel=error", f"@openai/codex@{VERSION}"], check=True)
    found = binary()
    if found is None:
        raise SystemExit(f"npm installed @openai/codex@{VERSION} but its binary is not under {target}")
    version = installed_version(found)
    if not version.endswith(VERSION):
        raise SystemExit(f"{found} reports {version!r}, not {VERSION}")
    print(f"[codex] {version}: {found}", flush=True)
    return found


def _install_npm() -> str:
    """A fresh Debian/Ubuntu machine has no npm: take Debian's (needs root or sudo)."""
    apt = shutil.which("apt-get")
    if apt is None:
        raise SystemExit("npm is needed to install the Codex CLI; install Node.js and npm")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, apt, "update", "-q"], check=True, env=env)
    subprocess.run([*sudo, apt, "install", "-y", "-q", "--no-install-recommends", "nodejs", "npm"], check=True, env=env)
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("apt-get installed npm, but it is not on PATH")
    return npm


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        raise SystemExit("usage: python -m tests.codex_cli install")
    install()
