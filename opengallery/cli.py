"""The `opengallery` console script.

A thin dispatcher: each command lives with the part of the system it belongs to and is
imported only when run, so that the service install (no torch) and the training install
(no FastAPI) each run their own commands and explain what is missing for the others.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

# command -> ("module:function", extra that provides it, one-line help).
# Each function takes the remaining argv and returns an exit code.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("training.cli:train_main", "train", "train an embedding network on a protocol"),
    "evaluate": ("training.cli:evaluate_main", "train", "gallery-based open-set evaluation"),
    "export": ("training.cli:export_main", "train", "export a run to an ONNX model bundle"),
    "compare": ("training.cli:compare_main", "train", "train every loss and compare them"),
    "serve": ("service.cli:serve_main", "service", "run the recognition service"),
    "keys": ("service.cli:keys_main", "service", "create API keys"),
    "db": ("service.cli:db_main", "service", "copy a SQLite database to PostgreSQL"),
    "enroll": ("opengallery.enroll:main", "client", "batch-enrol a folder over HTTP"),
    "push": ("opengallery.push:main", "client", "register a local bundle with a service"),
    "calibrate": (
        "opengallery.calibrate:main",
        "client",
        "upload strangers as a gallery's own calibration set",
    ),
    "export-gallery": (
        "opengallery.transfer:export_main",
        "client",
        "download a gallery as one archive",
    ),
    "import-gallery": (
        "opengallery.transfer:import_main",
        "client",
        "recreate a gallery from an archive",
    ),
}


_OWN_PACKAGES = {"opengallery", "training", "models", "service"}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: opengallery COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "`opengallery COMMAND --help` describes a command's options."]
    return "\n".join(lines)


def _resolve(target: str, extra: str, command: str) -> Callable[[Sequence[str]], int]:
    module_name, function_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or "a dependency"
        if missing.split(".")[0] in _OWN_PACKAGES:
            raise  # our own code is broken: not a missing extra
        raise SystemExit(
            f"opengallery {command}: needs '{missing}', which is part of the '{extra}' extra; "
            f"install it with: pip install 'opengallery[{extra}]'"
        ) from error
    return getattr(module, function_name)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    if args[0] == "--version":
        from opengallery import __version__

        print(__version__)
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"opengallery: unknown command '{command}'\n\n{_usage()}", file=sys.stderr)
        return 2
    target, extra, _ = COMMANDS[command]
    return int(_resolve(target, extra, command)(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
