"""Errors raised by the backend layer, with messages that say what to do."""


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here (missing package or missing device)."""


class BackendMismatchError(TypeError):
    """An array of one backend was handed to an operation running on another."""
