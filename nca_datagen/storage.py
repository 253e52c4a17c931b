"""Storage: one way to reach a dataset folder, on local disk or in any store fsspec reaches.

Everything that reads or writes a dataset goes through `filesystem(url)`, which resolves the URL through fsspec
itself (each store's package imported lazily), so local paths, `file://`, `memory://`, `s3://`, `gs://`, `az://`,
`hf://` and other fsspec protocols behave alike. Writes that readers may race are atomic: `write_atomic` writes a
local file under a temporary name and renames it; on object stores a PUT is already all-or-nothing (an object
becomes visible only when its upload completes), so it uploads straight to the final key. The trade-off: a whole
object is held in memory while it is written. Our objects are shards (a few MB) and JSON, so that is cheap, and it
lets the writer hash the exact bytes it publishes.

- Paths are literal: `[`, `*` and `?` are legal in folder names and keys, never patterns (`remove_files`).
- Listings are fresh: every remote store is opened with fsspec's listings cache off, and `listing` asks anew.
- A URL with an empty segment (`s3://b//x`) is refused: object stores would make a key no folder holds.
- Every store but S3 takes `storage_options` as its fsspec class's keyword arguments (gcsfs, adlfs,
  huggingface_hub: their own environment otherwise); the S3 flags below reach S3 alone.
- `memory://` is fsspec's in-process store: real, serverless, and gone when the process ends.

S3 settings come from the standard AWS environment (AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_S3, AWS_PROFILE,
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_DEFAULT_REGION) or from `storage_options`
(the `--endpoint-url`, `--profile` and `--s3-checksums` flags): `endpoint_url`, `profile`, `key`, `secret`,
`token`, `region`, `anon`, `checksums`. `checksums="when_required"` is for S3-compatible servers (older MinIO,
Ceph, some clouds) that reject the CRC checksum headers newer botocore sends by default; it is the same as
exporting AWS_REQUEST_CHECKSUM_CALCULATION=when_required and AWS_RESPONSE_CHECKSUM_VALIDATION=when_required.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import shutil
import sys
import tempfile
import uuid

CHECKSUM_MODES = ("when_supported", "when_required")
GLOB_CHARS = "*?["  # what fsspec's path expansion reads as a pattern
READ_CHUNK = 2**20  # bounded reads go in pieces of this size
_OUR_KEYS = ("endpoint_url", "profile", "key", "secret", "token", "region", "anon", "checksums")
S3_FLAGS = ("endpoint_url", "profile", "checksums")  # what --endpoint-url, --profile, --s3-checksums set: S3's
SCHEMES = ("file", "memory", "s3", "gs", "az", "hf")  # the documented stores, by the scheme messages name them
SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
# scheme -> (the fsspec package that reaches it, the extra of ours that installs it; s3fs is a dependency)
PACKAGES = {"s3": ("s3fs", None), "s3a": ("s3fs", None), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs"),
            "az": ("adlfs", "azure"), "abfs": ("adlfs", "azure"), "abfss": ("adlfs", "azure"),
            "hf": ("huggingface_hub", "hf")}
HINTS = {  # what to check when a store refuses or fails (S3's names the endpoint and credentials in use)
    "file": "a writable output folder",
    "memory": "the memory:// path (such a store lives in this Python process alone)",
    "gs": "the bucket name and the Google credentials (GOOGLE_APPLICATION_CREDENTIALS, `gcloud auth "
          "application-default login`, or token= in storage_options)",
    "az": "the container name, the account (AZURE_STORAGE_ACCOUNT_NAME or account_name=) and its credentials "
          "(AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_ACCOUNT_KEY, a SAS token, or `az login`)",
    "hf": "the repo name and the Hugging Face token (HF_TOKEN or `hf auth login`)",
}


def cache_folder(name: str):
    """A writable folder of this machine's for nca-datagen's own files (event-log spools, matplotlib's cache):
    ~/.cache/nca-datagen/NAME (XDG_CACHE_HOME honoured), else the temporary folder's (a read-only HOME)."""
    from pathlib import Path

    for base in (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"), Path(tempfile.gettempdir())):
        folder = base / "nca-datagen" / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
        except OSError:
            continue
    raise OSError(f"no writable folder for nca-datagen's {name} (tried ~/.cache and {tempfile.gettempdir()})")


def filesystem(url: str, storage_options: dict | None = None):
    """(fs, root): an fsspec filesystem and the path of `url` inside it (no scheme, no trailing slash). Local paths
    become absolute; any other scheme is resolved by fsspec. StorageError for an unknown scheme, or one whose
    package is not installed (naming the extra that installs it)."""
    url = str(url)
    if not url.strip():
        raise ValueError("an empty path or URL: give a folder (data/nca-web) or a URL such as s3://bucket/prefix")
    match = SCHEME.match(url)
    if match is None or match.group(1).lower() == "file":
        from fsspec.implementations.local import LocalFileSystem

        path = url[match.end():] if match else url
        return LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    protocol, path = match.group(1).lower(), url[match.end():].rstrip("/")
    if "//" in path or not path:
        raise ValueError(f"{url}: an empty bucket or path segment ('//'); write {protocol}://bucket/prefix")
    fs = _open_store(protocol, url, storage_options)
    return fs, fs._strip_protocol(url).rstrip("/")


def _open_store(protocol: str, url: str, storage_options: dict | None):
    """The fsspec filesystem of `protocol`: S3 with `s3_kwargs`, any other with `storage_options` as they are
    (less the S3 flags) and its listings cache off."""
    import fsspec

    from nca_datagen.errors import StorageError

    try:
        cls = fsspec.get_filesystem_class(protocol)
    except ValueError:
        raise StorageError(f"{url}: unknown URL scheme {protocol}://; give a local path or a URL fsspec knows: "
                           f"{', '.join(f'{s}://' for s in SCHEMES)} ...") from None
    except ImportError as exc:
        raise missing_package(protocol, exc) from None
    if "s3" in _protocols(cls):
        kwargs = s3_kwargs(storage_options)
    else:
        kwargs = {"use_listings_cache": False,  # listings go stale while shards are being written
                  **{k: v for k, v in (storage_options or {}).items() if k not in S3_FLAGS}}
    fs = fsspec.filesystem(protocol, **{**cls._get_kwargs_from_urls(url), **kwargs})
    if getattr(fs, "async_impl", False):
        _quiet_dropped_connections(fs.loop)
    return fs


def _quiet_dropped_connections(loop) -> None:
    """When a connection drops, the store's client (aiohttp) leaves requests whose connection error nobody
    awaits, and asyncio prints a traceback for each beside our one-line outage message. On fsspec's event loop,
    those are dropped; anything else goes to the handler the loop had (asyncio's default). Installed once."""
    previous = loop.get_exception_handler()
    if getattr(previous, "drops_dropped_connections", False):
        return
    dropped = (ConnectionError, *_client_connection_errors())

    def handler(loop, context: dict) -> None:
        if "never retrieved" in context.get("message", "") and isinstance(context.get("exception"), dropped):
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler.drops_dropped_connections = True
    loop.set_exception_handler(handler)


def _client_connection_errors() -> tuple[type[BaseException], ...]:
    try:
        from aiohttp import ClientConnectionError
    except ImportError:
        return ()
    return (ClientConnectionError,)


def missing_package(protocol: str, exc: ImportError | None = None):
    """The StorageError for a store whose package is not installed, naming the extra that installs it."""
    from nca_datagen.errors import StorageError

    package, extra = PACKAGES.get(protocol, (None, None))
    if package is None:
        return StorageError(f"{protocol}:// needs a package that is not installed: {exc}")
    fix = f"pip install 'nca-datagen[{extra}]'" if extra else f"pip install {package}"
    return StorageError(f"{protocol}:// needs {package}: {fix}")


def scheme(fs) -> str:
    """The URL scheme of `fs`: the one the docs name (file, memory, s3, gs, az, hf), else fsspec's first."""
    protocols = _protocols(fs)
    return next((p for p in protocols if p in SCHEMES), protocols[0])


def is_local(fs) -> bool:
    return scheme(fs) == "file"


def is_s3(fs) -> bool:
    return scheme(fs) == "s3"


def is_remote(fs) -> bool:
    """Whether reading `fs` costs a network round trip (not local disk, not this process's memory://)."""
    return scheme(fs) not in ("file", "memory")


def url_of(fs, path: str) -> str:
    """A URL for messages and for `filesystem()`: the local path, or SCHEME://path (gs://bucket/key,
    memory://folder, hf://datasets/org/name)."""
    if is_local(fs):
        return path
    return f"{scheme(fs)}://{path.lstrip('/') if scheme(fs) == 'memory' else path}"


def join(root: str, *parts: str) -> str:
    """Join path parts with '/' (local paths on POSIX and object keys alike)."""
    return posixpath.join(root, *parts)


def write_atomic(fs, path: str, data: bytes) -> None:
    """Make `path` hold exactly `data`, never visible half-written."""
    if is_local(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    else:
        fs.pipe_file(path, data)  # one PUT (or a multipart upload completed at the end): atomic


def move(fs, src: str, dst: str) -> None:
    """Give the file `src` the name `dst` (replacing it): a rename on local disk, a server-side copy and a delete
    on object stores (no bytes pass through this machine)."""
    if is_local(fs):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.replace(src, dst)
        return
    fs.copy(src, dst)
    remove_files(fs, [src])


def write_url(url: str, data: bytes, storage_options: dict | None = None) -> str:
    """Write `data` to a local path or URL (atomic; local parent folders are made); returns the name to print: a
    local path as given, an object's URL. ValueError naming the URL when storage refuses."""
    try:
        fs, path = filesystem(url, storage_options)
        write_atomic(fs, path, data)
    except errors() as exc:
        from nca_datagen.errors import StorageError

        raise StorageError(f"cannot write {describe_failure(fs, path, exc)}") from exc
    return url if is_local(fs) else url_of(fs, path)


def remove(fs, path: str) -> None:
    """Delete a file, or a folder with everything under it, by its literal name (see `remove_files`)."""
    if is_local(fs):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
        return
    remove_files(fs, fs.find(path) if fs.isdir(path) else [path])


def remove_files(fs, paths: list[str]) -> None:
    """Delete these files (missing ones are no error) by their literal names. fsspec's `rm` would read `[`, `*`
    and `?` as glob patterns, and they are legal in folder names and object keys (s3://b/run[2] failed with
    "FileNotFoundError: []"): local files go through os, and on object stores keys that look like globs are
    deleted one by one, the rest in fsspec's batched delete."""
    if is_local(fs):
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        return
    globby = {path for path in paths if any(c in path for c in GLOB_CHARS)}
    if plain := [path for path in paths if path not in globby]:
        fs.rm(plain)
    for path in globby:
        fs.rm_file(path)


def read_bytes(fs, path: str, limit: int | None = None) -> bytes:
    """The file's bytes; with `limit`, at most that many (a file from elsewhere may be any size: callers that
    know how large it may be read one byte more and refuse a longer one)."""
    with fs.open(path, "rb") as f:
        if limit is None:
            return f.read()
        chunks = []
        while limit > 0 and (chunk := f.read(min(limit, READ_CHUNK))):  # read(n) may allocate n bytes up front
            chunks.append(chunk)
            limit -= len(chunk)
        return b"".join(chunks)


def exists(fs, path: str) -> bool:
    return fs.exists(path)


def basename(path: str) -> str:
    """The last part of a local path or object key (what `listing` keys by)."""
    return path.rstrip("/").rsplit("/", 1)[-1]


def listing(fs, directory: str) -> dict[str, int]:
    """{file name: size in bytes} directly under `directory`, fresh (never a cached listing); empty if it does
    not exist. One request on object storage, where asking about each expected file costs one or two apiece."""
    fs.invalidate_cache(directory)
    try:
        entries = fs.ls(directory, detail=True)
    except FileNotFoundError:
        return {}
    return {basename(e["name"]): int(e.get("size") or 0) for e in entries
            if e.get("type") == "file"}


def size(fs, path: str) -> int | None:
    """Size in bytes, or None when `path` does not exist."""
    try:
        return int(fs.info(path)["size"])
    except FileNotFoundError:
        return None


# module -> its error classes that are not OSErrors (huggingface_hub's are); a module not loaded raised none
_STORE_ERRORS = {"botocore.exceptions": ("BotoCoreError", "ClientError"), "gcsfs.retry": ("HttpError",),
                 "google.auth.exceptions": ("GoogleAuthError",), "azure.core.exceptions": ("AzureError",)}


def errors() -> tuple[type[BaseException], ...]:
    """What storage access raises for an environment problem (a missing path or bucket, permissions, an endpoint
    that does not answer, missing credentials): OSError, plus the store packages' own errors once loaded."""
    found: list[type[BaseException]] = [OSError]
    for module, names in _STORE_ERRORS.items():
        if (loaded := sys.modules.get(module)) is not None:
            found += [getattr(loaded, name) for name in names]
    return tuple(found)


def unreachable(fs, root: str) -> str | None:
    """None when the storage of `root` answers (a missing folder is an answer), else its error in one line. One
    quick request: S3 is asked by a client with short timeouts and no retries, so a store that is gone costs
    seconds here, not the minute of retries a normal request rides out (other stores: their own timeouts)."""
    probe = fs
    if is_s3(fs):
        import s3fs

        options = dict(getattr(fs, "storage_options", {}) or {})
        config = {**options.pop("config_kwargs", {}), "connect_timeout": 5, "read_timeout": 10,
                  "retries": {"max_attempts": 1}}
        probe = s3fs.S3FileSystem(**options, config_kwargs=config, skip_instance_cache=True)
        probe.retries = 1  # s3fs's own retry loop, besides botocore's
    try:
        probe.ls(root, detail=False)
    except FileNotFoundError:
        return None
    except errors() as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def access_hint(fs) -> str:
    """What to check when storage refuses or fails: a local folder's permissions, S3's endpoint and the credentials
    in use (named with where they came from), or what the other store needs."""
    if not is_s3(fs):
        return HINTS.get(scheme(fs), f"the {scheme(fs)}:// location and its credentials")
    options = getattr(fs, "storage_options", {}) or {}
    endpoint = options.get("endpoint_url") or "AWS's default endpoint"
    return f"the bucket name, the endpoint ({endpoint}) and the credentials ({credentials_source(options)})"


def credentials_source(options: dict) -> str:
    """Which credentials botocore uses for these `s3fs` keyword arguments, in its own order of precedence."""
    if options.get("anon"):
        return "anonymous access"
    if options.get("key"):
        return "a key given in storage_options"
    if options.get("profile"):
        return f"profile {options['profile']!r} (--profile)"
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        return "AWS_ACCESS_KEY_ID from the environment"
    if os.environ.get("AWS_PROFILE"):
        return f"profile {os.environ['AWS_PROFILE']!r} from AWS_PROFILE"
    return "botocore's default chain: ~/.aws/credentials, ~/.aws/config, then instance or container roles"


def describe_failure(fs, path: str, exc: BaseException) -> str:
    """One line for a storage error at `path`: the URL, the error, and what to check."""
    return f"{url_of(fs, path)}: {type(exc).__name__}: {exc}; check {access_hint(fs)}"


def storage_options_from_flags(endpoint_url=None, profile=None, checksums=None) -> dict:
    """Turn the CLI's S3 flags into `storage_options` (unset flags leave the AWS environment in charge)."""
    opts = {"endpoint_url": endpoint_url, "profile": profile, "checksums": checksums}
    return {k: v for k, v in opts.items() if v}


def s3_kwargs(storage_options: dict | None) -> dict:
    """Our storage options plus the AWS environment -> keyword arguments of `s3fs.S3FileSystem`."""
    opts = dict(storage_options or {})
    extra = {k: v for k, v in opts.items() if k not in _OUR_KEYS}  # anything else goes to s3fs unchanged
    kwargs: dict = {"use_listings_cache": False, **extra}  # listings go stale while shards are being written
    endpoint = opts.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    for ours, theirs in (("profile", "profile"), ("key", "key"), ("secret", "secret"), ("token", "token"),
                         ("anon", "anon")):
        if opts.get(ours) is not None:
            kwargs[theirs] = opts[ours]
    region = opts.get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs.setdefault("client_kwargs", {})["region_name"] = region
    checksums = opts.get("checksums")
    if checksums:
        if checksums not in CHECKSUM_MODES:
            raise ValueError(f"checksums={checksums!r}: choose one of {', '.join(CHECKSUM_MODES)}")
        config = kwargs.setdefault("config_kwargs", {})
        config["request_checksum_calculation"] = checksums
        config["response_checksum_validation"] = checksums
    return kwargs


def _protocols(fs) -> tuple:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)
