"""Headless Chromium for the dashboard: the DOM after its scripts ran, and screenshots."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--virtual-time-budget=8000"]


def binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _run(args: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    exe = binary()
    if exe is None:
        raise FileNotFoundError("headless Chromium is not installed: `apt-get install chromium` (infra/setup.sh does it)")
    with tempfile.TemporaryDirectory() as profile:  # a throwaway profile: no state between runs
        return subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                              timeout=timeout_s, check=True)


def dump_dom(url: str, timeout_s: float = 60) -> str:
    """The page's HTML after its scripts ran (fetches included, within the virtual time budget)."""
    return _run(["--dump-dom", url], timeout_s).stdout


def screenshot(url: str, path: Path, width: int = 1280, height: int = 1000, timeout_s: float = 60) -> Path:
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    _run([f"--screenshot={path}", f"--window-size={width},{height}", url], timeout_s)
    return path
