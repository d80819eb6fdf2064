"""Debian's chromium for the dashboard's browser tests (Playwright drives it; Playwright's own
browser download is not used). Installed with apt-get when missing and we are root, as
syncd.testnet.server does for MariaDB; otherwise a clear error, never a silent skip."""

from __future__ import annotations

import os
import shutil
import subprocess

import structlog

log = structlog.get_logger("syncd.testnet")

INSTALL_LINE = "apt-get update && apt-get install -y chromium"
#: Headless, no network of its own, nothing remembered between runs.
ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


class BrowserNotInstalled(RuntimeError):
    pass


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
        if path:
            return path
    return None


def ensure_chromium() -> str:
    found = find_chromium()
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log.info("chromium_install_start", command=INSTALL_LINE)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = [
            "apt-get",
            "-o",
            "DPkg::Lock::Timeout=300",
            "install",
            "-y",
            "--no-install-recommends",
            "chromium",
        ]
        if subprocess.run(install, env=env, check=False).returncode != 0:
            subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=300", "update"], env=env, check=True)
            subprocess.run(install, env=env, check=True)
        found = find_chromium()
        if found:
            return found
    raise BrowserNotInstalled(
        f"Debian's chromium is needed for the browser tests; install it as root with:\n    {INSTALL_LINE}"
    )
