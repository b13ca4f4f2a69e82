"""The errors glasses raises on purpose: each message names the file, row or value at fault."""


class GlassesError(Exception):
    """Base of every error raised on purpose by glasses."""


class ConfigError(GlassesError):
    """A config value, preset or file that cannot be used."""


class DatasetError(GlassesError):
    """Bad input data: a missing file, a bad column, row, id, label or image."""


class SynthError(DatasetError):
    """The synthetic dataset cannot be written where or how it was asked."""


class SearchError(GlassesError):
    """A search that cannot start or could not finish all its trials."""


class OutputError(GlassesError):
    """A work dir or output that cannot be used: it overlaps the data, is locked by another
    run, cannot be written, or holds something glasses did not make."""
