"""User-facing errors. The CLI prints these as one clear line (no traceback) and exits non-zero."""


class WorkbenchError(ValueError):
    """Bad input from a user: a config, a notebook parameter, a CLI flag, a data path. The message says the fix."""


class ConfigError(WorkbenchError):
    """A config dataclass rejected its values (raised from ``__post_init__`` before anything is allocated)."""
