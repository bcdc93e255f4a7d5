"""The single entry point: ``workbench <command> ...``.

Each command lives in the package it belongs to, as a module with ``add_arguments(parser)`` and ``run(args) -> int``;
it is imported only when that command runs, so ``workbench info`` does not pay for importing the trainer.
User errors (bad flags, configs, paths, devices) print one line and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

# command -> (module, one-line help). Add a command by adding a line here.
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("workbench.device.cli", "devices, library versions, training dtype, measured GEMM peak and bandwidth"),
    "models": ("workbench.model.cli", "list model presets with total and active parameters"),
    "train": ("workbench.train.cli", "train a model preset on a corpus (checkpoints, metrics, MFU)"),
    "kernels": ("workbench.kernels.cli", "list kernel implementations available here, or benchmark them"),
    "launch": ("workbench.distributed.launch_cli", "launch a distributed run with torchrun (or write a Slurm script)"),
    "comm-bench": ("workbench.distributed.comm_bench", "benchmark collectives (all-reduce, all-gather, ...)"),
    "profile": ("workbench.profiling.cli", "profile training steps: trace, op table, step breakdown, MFU waterfall"),
    "simulate": ("workbench.perfmodel.cli", "simulate cluster-scale training from a JSON spec"),
    "export": ("workbench.interop.cli", "write a trained run's checkpoint as a transformers folder (+ tokenizer)"),
}


def _user_errors() -> tuple[type[BaseException], ...]:
    from workbench.device.detect import DeviceUnavailableError
    from workbench.errors import WorkbenchError

    # OSError: the file system said no (missing path, permission, disk full, read-only); what was written before
    # stays valid (checkpoints and run files are written atomically), so one line says enough
    return (WorkbenchError, DeviceUnavailableError, ValueError, KeyError, OSError, UnicodeDecodeError)


def _top_level_help() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: workbench <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Run `workbench <command> --help` for a command's options."]
    return "\n".join(lines)


# What a write can run into, and what to do: a full disk, the file-size limit (`ulimit -f`, or the largest file of
# the file system) and a disk quota. The OS error names the file; train adds the --resume hint.
WRITE_ADVICE = {
    errno.ENOSPC: "free some space",
    errno.EFBIG: "a file reached the file-size limit (ulimit -f) or the largest file the file system holds: raise "
                 "the limit or choose another --out",
    getattr(errno, "EDQUOT", -1): "the disk quota is used up: free some space",
}


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # short output sits in the buffer until here: a reader gone shows only now
        return code
    except BrokenPipeError:  # `workbench models | head -1`: the reader left; not an error of ours, no traceback
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush finds somewhere to go
        except (OSError, ValueError):  # no real stdout (notebooks, pytest capture)
            pass
        return 128 + 13  # as a process ended by SIGPIPE


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_top_level_help())
        return 0
    if argv[0] in ("-V", "--version"):
        from workbench import __version__

        print(__version__)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"workbench: unknown command {command!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module_name, text = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"workbench {command}", description=text)
    module.add_arguments(parser)
    args = parser.parse_args(rest)  # argparse itself prints one usage line and exits 2 on bad flags
    try:
        return int(module.run(args) or 0)
    except BrokenPipeError:
        raise
    except _user_errors() as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        advice = WRITE_ADVICE.get(exc.errno) if isinstance(exc, OSError) else None
        if advice and command == "train":
            message = f"{message}; {advice} (a training run continues from its last checkpoint with --resume)"
        print(f"workbench {command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM / SIGHUP during a launch (launcher.Terminated)
        signum = getattr(exc, "signum", 2)
        print(f"workbench {command}: {'interrupted' if signum == 2 else exc}", file=sys.stderr)
        return 128 + signum
    except (MemoryError, RuntimeError) as exc:
        from workbench.errors import out_of_memory_message

        message = out_of_memory_message(exc)
        if message is None:
            raise  # a bug, not a user error: keep the traceback
        print(f"workbench {command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
