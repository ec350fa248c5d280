"""The one exception type users see: a DigitlabError carries a message fit to print as-is.

The CLI turns any DigitlabError into one line on stderr and a non-zero exit; the REST API turns
it into a 4xx JSON error. Anything else escaping is a bug.
"""


class DigitlabError(Exception):
    """A problem the user can fix: bad input, a missing file, an unknown name."""


class DataError(DigitlabError):
    """A dataset file is missing, unreadable or does not match its checksum."""


class ConfigError(DigitlabError, ValueError):
    """A configuration key is unknown or a value has the wrong type or range."""


class RunError(DigitlabError):
    """A run folder or checkpoint is missing, unsafe, or does not fit its model."""


class ImageError(DigitlabError, ValueError):
    """An input image cannot be read or holds no digit."""


class ModelError(RunError):
    """A model misbehaves: its output has the wrong shape or is not finite, or it ran past its deadline. At load
    (the Predictor's probe) it means the model file is refused; per request it is the server's fault, not the
    client's."""
