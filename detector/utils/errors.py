"""The Python API's typed errors. Each carries the message the command lines print as
their one ``error:`` line, so a script and a user at a terminal read the same words."""


class DetectorError(Exception):
    """Anything the API refuses or that stops a run, with a message for the user."""


class ConfigError(DetectorError, ValueError):
    """Bad input: a config key or value, a dataset spec, a flag, a file (the command
    lines' exit status 2)."""


class TrainingError(DetectorError, RuntimeError):
    """A run that started and stopped on purpose: a non-finite loss, a worker that failed
    (the command lines' exit status 3)."""
