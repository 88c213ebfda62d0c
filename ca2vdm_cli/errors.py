"""Exception hierarchy: every error a user can cause carries the bad value and the fix in its message.

The CLI prints these as one line with exit code 1; anything else is a bug and keeps its traceback.
"""


class Ca2VDMError(Exception):
    """Base class for errors that are the user's input or environment, not a bug."""


class ConfigError(Ca2VDMError, ValueError):
    """An inconsistent model or sampling configuration."""


class InputError(Ca2VDMError, ValueError):
    """A bad prompt, image, frame count or other request value."""


class WeightsError(Ca2VDMError):
    """A checkpoint that is missing, corrupt, or does not fit the chosen architecture."""


class OutputError(Ca2VDMError):
    """The output file or directory cannot be written."""


class DownloadError(Ca2VDMError):
    """A file could not be downloaded or verified."""
