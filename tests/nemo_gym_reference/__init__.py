"""NeMo Gym 0.7.0's own ``vllm_model`` server, installed apart, for the differential test.

    python -m tests.nemo_gym_reference install      # once; seconds when cached

Gym 0.7.0 pins ``openai==2.44.0`` (the test venv has a newer openai the other tests rely on) and
declares Python >= 3.13, so it cannot share the test venv: it gets its own venv under
``~/.cache/vllm-gateway/nemo-gym-0.7.0/``, with the wheel installed ``--no-deps
--ignore-requires-python`` and only the packages its imports of ``responses_api_models.vllm_model``
need (pinned below). ``ray`` is only read for its version (``nemo_gym.global_config``), so a
dist-info stands in for it. ``runner.py`` (the server) and ``config_runner.py`` (Gym's config
loading) run in that venv; the tests drive them in a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

GYM_VERSION = "0.7.0"
# What `import responses_api_models.vllm_model.app` needs, at the versions it was verified with.
REQUIREMENTS = (
    "openai==2.44.0",
    "anthropic==0.109.2",
    "fastapi==0.165.0",
    "starlette==1.10.0",
    "pydantic==2.14.4",
    "uvicorn==0.54.0",
    "httptools==0.9.0",
    "httpx==0.28.1",
    "aiohttp==3.14.5",
    "orjson==3.13.0",
    "omegaconf==2.3.1",
    "hydra-core==1.3.8",
    "requests==2.34.2",
    "psutil==7.2.2",
    "rich==15.0.0",
    "itsdangerous==2.2.0",
    "anyio==4.16.0",
    "yappi==1.7.6",
    "pydot==4.0.1",
)
RUNNER = Path(__file__).with_name("runner.py")
CONFIG_RUNNER = Path(__file__).with_name("config_runner.py")  # Gym's own config loading
_STAMP = hashlib.sha256(json.dumps([GYM_VERSION, REQUIREMENTS]).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get("VLLM_GATEWAY_CACHE", Path.home() / ".cache" / "vllm-gateway"))


def venv_dir() -> Path:
    return cache_dir() / f"nemo-gym-{GYM_VERSION}" / "venv"


def python() -> Path:
    return venv_dir() / "bin" / "python"


def installed() -> bool:
    stamp = venv_dir() / "installed.stamp"
    return python().exists() and stamp.exists() and stamp.read_text().strip() == _STAMP


def wheel_dir() -> Path:
    """Where the installed wheel's files are (its shipped configs are read from here)."""
    out = subprocess.run(
        [str(python()), "-c", "import nemo_gym, os; print(os.path.dirname(os.path.dirname(nemo_gym.__file__)))"],
        check=True, capture_output=True, text=True,
    )
    return Path(out.stdout.strip())


def _log(message: str) -> None:
    print(f"[nemo-gym {GYM_VERSION}] {message}", file=sys.stderr, flush=True)


def install() -> Path:
    if installed():
        _log(f"already installed in {venv_dir()}")
        return python()
    venv = venv_dir()
    venv.parent.mkdir(parents=True, exist_ok=True)
    _log(f"installing into {venv}")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python()), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--no-deps", "--ignore-requires-python", f"nemo-gym=={GYM_VERSION}"], check=True)
    subprocess.run([*pip, *REQUIREMENTS], check=True)
    site = Path(subprocess.run(
        [str(python()), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip())
    stub = site / "ray-2.58.0.dist-info"
    stub.mkdir(exist_ok=True)
    (stub / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: ray\nVersion: 2.58.0\n"
        "Summary: stand-in: nemo_gym reads only ray's version; vllm_model does not use ray\n"
    )
    (stub / "RECORD").write_text("ray-2.58.0.dist-info/METADATA,,\nray-2.58.0.dist-info/RECORD,,\n")
    # Prove it imports (and that the stand-in is never imported as a module).
    subprocess.run(
        [str(python()), "-c", "import responses_api_models.vllm_model.app as a, sys; assert 'ray' not in sys.modules"],
        check=True, cwd=tempfile.gettempdir(),
    )
    (venv / "installed.stamp").write_text(_STAMP + "\n")
    _log("installed")
    return python()
