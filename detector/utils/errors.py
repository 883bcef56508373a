"""The Python API's typed errors. Each carries the message the command lines print as
their one ``error:`` line, so a script and a user at a terminal read the same words."""

import contextlib


class DetectorError(Exception):
    """Anything the API refuses or that stops a run, with a message for the user."""


class ConfigError(DetectorError, ValueError):
    """Bad input: a config key or value, a dataset spec, a flag, a file (the command
    lines' exit status 2)."""


class TrainingError(DetectorError, RuntimeError):
    """A run that started and stopped on purpose: a non-finite loss, a worker that failed
    (the command lines' exit status 3)."""


@contextlib.contextmanager
def config_errors():
    """Runs the block with its bad input raised as `ConfigError`, the message kept: a
    ValueError's own, an OSError (a path the system refuses) described in one line
    (`detector.utils.atomic.describe_os_error`). A `DetectorError` passes as it is."""
    from detector.utils.atomic import describe_os_error

    try:
        yield
    except DetectorError:
        raise
    except ValueError as error:
        raise ConfigError(str(error)) from error
    except OSError as error:
        raise ConfigError(describe_os_error(error)) from error
