"""Settings files: a command's options as TOML, YAML or JSON, so that a build (or a training run) is one file to
keep, review and share.

- keys are the options' names, with dashes or underscores (`samples-per-shard`, `samples_per_shard`);
- one file may hold several commands' settings, each under the command's name (`[build]`, `[train.nca]` or
  `train: {nca: ...}`); a command takes its own section when there is one, else the whole file;
- flags given on the command line win over the file; a key the command does not have is refused, naming it.
"""

from __future__ import annotations

import json
from pathlib import Path

from nca_datagen.errors import ConfigError

MAX_SETTINGS_BYTES = 2**20  # a settings file is a few hundred bytes; anything near this is not one


def load_settings(path: str | Path, command: str) -> dict:
    """The settings for `command` ("build", "train nca", ...) in the file at `path`, keys with underscores."""
    path = Path(path)
    try:
        text = path.read_bytes()[: MAX_SETTINGS_BYTES + 1].decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc})") from None
    if len(text) > MAX_SETTINGS_BYTES:
        raise ConfigError(f"--config {path}: more than {MAX_SETTINGS_BYTES:,} bytes, not a settings file")
    data = _parse(path, text)
    for part in command.split():  # "train nca" -> data["train"]["nca"], when the file has such sections
        if isinstance(data.get(part), dict):
            data = data[part]
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a table of option names and values")
    return {str(key).replace("-", "_"): value for key, value in data.items()}


def _parse(path: Path, text: str):
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib  # Python 3.11+

            return tomllib.loads(text)
        if suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
        if suffix == ".json":
            return json.loads(text)
    except ImportError:
        raise ConfigError(f"--config {path}: TOML needs Python 3.11 or newer; use YAML or JSON") from None
    except Exception as exc:  # each parser has its own error class
        raise ConfigError(f"--config {path}: not valid {suffix[1:].upper()} ({exc})") from None
    raise ConfigError(f"--config {path}: use a .toml, .yaml or .json file")
