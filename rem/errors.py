"""Typed errors. Each message is one line that says what is wrong and what to do."""

import re

_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s'\"]+@")


def redact(text: str) -> str:
    """A message as it may be shown or logged: the user and password inside any URL (an endpoint
    given as http://key:secret@host) replaced by ***."""
    return _URL_USERINFO.sub(r"\g<scheme>***@", text)


class RemError(Exception):
    """Base class for every error this toolkit raises on purpose."""


class UsageError(RemError):
    """Bad input from the user (a path, a name, a flag combination)."""


class CheckFailed(RemError):
    """A check ran and found a problem (a critical verify finding, a failed drill): the run fails, and
    its full result still goes with it, for the command line to print."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


class DatabaseLocked(RemError):
    def __init__(self, path: str):
        super().__init__(
            f"{path}: a writer holds its lock (another process has it open read-write); "
            "stop that process or use a read-only command"
        )
        self.path = path


class DatabaseNotFound(UsageError):
    def __init__(self, path: str):
        from pathlib import Path

        from rem.scratch import quarantines

        moved = quarantines(Path(path))
        if moved and not Path(path).exists():
            message = (f"{path}: no REM database here, but an interrupted restore left the one that was here in "
                       f"{moved[-1]}; `mv {moved[-1]} {path}` puts it back")
        else:
            message = f"{path}: no REM database here (no CURRENT file); check --db-path / P8_DB_PATH"
        super().__init__(message)
        self.path = path


class DecodeError(RemError):
    """Bytes in a column family that do not decode as that column family's format."""

    def __init__(self, cf: str, key: bytes, reason: str):
        super().__init__(f"column family {cf!r}, key {key!r}: {reason}")
        self.cf = cf
        self.key = key
        self.reason = reason


class ConfigError(RemError):
    """Bad configuration: names where it came from, the key, and what is accepted."""



class NoSpace(RemError):
    """The filesystem is full: retrying cannot help, and the operator needs to know where."""

    def __init__(self, path, what: str):
        super().__init__(f"{path}: no space left on device; free space there or point {what} elsewhere")
        self.path = str(path)
