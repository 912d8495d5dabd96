"""Where a result came from: the time, the git commit, package versions, the device, the machine and the process.

The one place that asks git for a commit and the one place that names this process (pid and host) for run
records and lock files. Nothing here imports torch; it only describes it when it is already loaded.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

_VERSIONED_PACKAGES = {"torch": "torch", "transformers": "transformers", "lm_eval": "lm_eval",
                       "refine_bench": "refine-bench"}


def utc_now() -> datetime:
    """Timezone-aware current UTC time."""
    return datetime.now(timezone.utc)


def git_sha(cwd: Path | None = None) -> str | None:
    """HEAD's SHA of the repository holding `cwd` (default: this package's source tree), or None."""
    where = cwd or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and sha else None


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that decide a result."""
    versions: dict[str, str | None] = {}
    for key, dist in _VERSIONED_PACKAGES.items():
        try:
            versions[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[key] = None
    versions["python"] = platform.python_version()
    return versions


def device_info(requested: Any) -> dict[str, Any]:
    """The device a run asked for and the machine it ran on (GPU names when torch is loaded and sees CUDA)."""
    info: dict[str, Any] = {"requested": requested, "platform": platform.platform(),
                            "machine": platform.machine(), "processor": platform.processor() or None}
    torch = sys.modules.get("torch")  # only describe CUDA if torch is already loaded; never import it here
    if torch is not None:
        try:
            if torch.cuda.is_available():
                info["cuda"] = torch.version.cuda
                info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        except Exception:  # noqa: BLE001 - a broken CUDA setup must not stop a run being recorded
            info["cuda"] = None
    return info


def machine_name() -> str:
    """A coarse machine label for the metric history: OS, architecture and CPU count."""
    return f"{platform.system().lower()}-{platform.machine()}-{os.cpu_count()}cpu"


def this_process() -> dict[str, Any]:
    """{"pid", "host"} of the running process: who holds a lock or writes a run record."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (it may belong to another user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
