"""The errors nca-datagen raises for its users, in one place: a caller tells them apart by class, and the CLI
turns each into one `Error:` line and its exit code (`cli.py`).

| error | raised when | exit |
|---|---|---|
| `ConfigError` | a setting is invalid or settings contradict each other (the message names the fix) | 2 |
| `OutputRefused` | the output holds someone else's files, another recipe's dataset or build | 1 |
| `LocationBusy`, `ClaimLost` | another writer holds the output, or took it over (`claim.py`) | 1 |
| `DatasetError`, `ShardError` | a dataset, manifest or shard is missing, damaged or not safe to read | 1 |
| `StorageError` | storage refuses or stops answering (permissions, credentials, an endpoint gone) | 1 |
| `BuildFailed`, `BandUnreachable` | shards still failed after their retries; a band keeps too few rules | 1 |
| `Interrupted` | Ctrl-C or SIGTERM stopped a build; complete shards are kept | 130, 143 |

All but `Interrupted` are `ValueError`s, so code that caught ValueError before keeps working; `Interrupted` is a
`KeyboardInterrupt`, so an interrupt still unwinds whatever called the build.
"""

from __future__ import annotations

import signal


class NcaDatagenError(Exception):
    """Anything nca-datagen refuses or fails at, with a message that names the cause and the fix."""

    exit_code = 1


class ConfigError(NcaDatagenError, ValueError):
    exit_code = 2


class OutputRefused(NcaDatagenError, ValueError):
    pass


class LocationBusy(OutputRefused):
    """Another process (on any machine) holds the output's claim."""


class ClaimLost(OutputRefused):
    """This writer's claim was taken over (judged stale): it must stop writing."""


class DatasetError(NcaDatagenError, ValueError):
    pass


class ShardError(DatasetError):
    """A shard is missing, truncated or corrupt. The message names the file."""


class StorageError(NcaDatagenError, ValueError):
    pass


class BuildFailed(NcaDatagenError, ValueError):
    pass


class BandUnreachable(BuildFailed):
    """The band kept too few of the candidates a shard may probe."""


class Interrupted(NcaDatagenError, KeyboardInterrupt):
    """A build stopped by a signal; the message says what is kept and how to finish."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = 128 + self.signum  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM
