"""Shards: the on-disk format of one `ShardData`, its shard record, and a streaming reader.

A shard is a WebDataset tar, zstd-compressed as a whole (`.tar.zst`), or a plain `.tar` with
`compression="none"`. Per sample, two contiguous members, sorted by name:

    KEY.json        {"key", "split", "shard", "sample", "rule_id", "sim", "complexity", ...} (sorted keys)
    KEY.tokens.npy  the full token sequence, little-endian uint16 (`np.save`, no pickle)

KEY is `{split}-{shard:06d}-{sample:06d}` (no dots, unique in the dataset, sorts in sample order). Members have
mtime 0, uid/gid 0, empty user/group names and mode 0644, and nothing else varies, so the same `ShardData`
always gives the same bytes and the same sha256 (rebuilt shards can be compared by hash).

Writing: the shard is built in memory, hashed, written atomically to its final name (`storage.write_atomic`),
and only then is its record `{split}/shard-NNNNNN.json` written: the completion marker a resumed build trusts,
holding everything the manifest needs (sizes, sha256, filter counts, histograms, per-sample columns) so the
manifest never has to re-read shards. The trade-off of building in memory: a shard's bytes are held twice
(tar + compressed) for a moment, which is a few MB at the default sizes.

Reading: `iter_shard_samples` streams members through zstd and a minimal ustar parser in memory; it never
extracts anything to disk and rejects member names that are not plain file names, non-regular members, bad
header checksums, members larger than the format allows and archives that end without the end-of-archive
blocks. With `expected_sha256` it first reads the compressed shard (at most its recorded size) into memory and
checks it, so a corrupt shard yields nothing rather than a prefix. Shards and records from elsewhere are
untrusted: every size is bounded by what the format allows (`max_shard_bytes`, `MAX_JSON_MEMBER`) and a record
is nca-datagen's only when `record_problem` finds nothing wrong with it.

The tar is written and parsed directly rather than with `tarfile` (whose output ours matches byte for byte,
tested): `tarfile` costs ~0.25 ms of Python per member, which held writing and reading near 1M tokens/s per core.

zstd level 3 (zstd's own default) is ours (`DEFAULT_LEVEL`): level 6 saves under 1% of the bytes at 2.4x the CPU,
which a GPU build's host needs more (benchmarks/results/zstd_levels.md). A resumed build keeps the level its first
shards were written with (read from their records), so a dataset never mixes levels.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import re
from collections.abc import Iterator

import numpy as np

from nca_datagen import storage
from nca_datagen.complexity import histogram
from nca_datagen.errors import ShardError

COMPRESSIONS = {"zstd": ".tar.zst", "none": ".tar"}
DEFAULT_COMPRESSION = "zstd"
DEFAULT_LEVEL = 3  # see the module docstring for the measurement behind this choice
HIST_BINS = 50  # fixed edges on [0, 1]: histograms of different shards add up bin by bin
TOKEN_DTYPE = np.dtype("<u2")
BLOCK, RECORD = 512, 10240  # tar block and record sizes (tarfile pads archives to whole records)
ZERO_BLOCK = bytes(BLOCK)
_SAFE_MEMBER = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_.-]+")
MAX_JSON_MEMBER = 64 * 1024  # a sample's metadata is ~300 bytes; anything near this is not ours
NPY_HEADER = 128  # np.save's header for a 1-D array: magic, length and dict padded to 64 bytes
MAX_MEMBER = 256 * 2**20  # any member when the sequence length is unknown (2^27 uint16 tokens)
MAX_RECORD_BYTES = 256 * 2**20  # a record's per-sample columns take ~150 bytes a sample, 10^6 samples at most
RECORD_FIELDS = frozenset({"split", "index", "path", "compression", "level", "samples", "seq_len", "tokens", "bytes",
                           "sha256", "counts", "histograms", "columns", "recipe"})
_HEX = re.compile(r"[0-9a-f]+")


def shard_name(split: str, index: int, compression: str = DEFAULT_COMPRESSION) -> str:
    """'train/shard-000000.tar.zst' ('.tar' for compression='none'), relative to the dataset root."""
    return f"{split}/shard-{index:06d}{_suffix(compression)}"


def record_name(split: str, index: int) -> str:
    """'train/shard-000000.json': the shard record, written after its shard (the completion marker)."""
    return f"{split}/shard-{index:06d}.json"


def sample_key(split: str, shard_index: int, sample: int) -> str:
    return f"{split}-{shard_index:06d}-{sample:06d}"


def shard_bytes(data, compression: str = DEFAULT_COMPRESSION, level: int = DEFAULT_LEVEL, columns=None) -> bytes:
    """The exact bytes of a shard (a pure function of `data`, `compression` and `level`)."""
    _suffix(compression)  # an unknown compression fails before the tar is built
    tar = _tar_bytes(data, columns or sample_columns(data))
    if compression == "none":
        return tar
    import zstandard

    return zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True).compress(tar)


def write_shard(data, out_url: str, *, recipe: str, compression: str = DEFAULT_COMPRESSION,
                level: int = DEFAULT_LEVEL, storage_options: dict | None = None) -> dict:
    """Write one shard and then its record under the dataset folder `out_url`; return the record. `recipe`: the
    fingerprint of the recipe that made it (`config.recipe_fingerprint`), the record's proof of origin."""
    fs, root = storage.filesystem(out_url, storage_options)
    columns = sample_columns(data)
    blob = shard_bytes(data, compression, level, columns)
    record = shard_record(data, blob, compression, level, columns, recipe=recipe)
    storage.write_atomic(fs, storage.join(root, record["path"]), blob)
    storage.write_atomic(fs, storage.join(root, record_name(data.split, data.shard_index)), compact_json(record))
    return record


def shard_record(data, blob: bytes, compression: str, level: int, columns=None, *, recipe: str) -> dict:
    """What the manifest needs to know about one shard (deterministic: no timestamps, no timings)."""
    columns = columns or sample_columns(data)
    rule_ids = np.asarray(data.columns["rule_id"])
    _, first_of_rule = np.unique(rule_ids, return_index=True)
    kept_probe = np.asarray(data.columns["probe_complexity"])[np.sort(first_of_rule)]
    return {
        "split": data.split,
        "index": int(data.shard_index),
        "path": shard_name(data.split, data.shard_index, compression),
        "compression": compression,
        "level": int(level) if compression != "none" else None,
        "samples": int(data.num_samples),
        "seq_len": int(data.tokens_NL.shape[1]),
        "tokens": int(data.tokens_NL.size),
        "bytes": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "counts": {k: int(v) for k, v in data.counts.items()},
        "histograms": {
            "candidates": histogram(data.candidate_ratio_M, HIST_BINS),  # probe ratio of every candidate
            "kept": histogram(kept_probe, HIST_BINS),  # probe ratio of the kept rules (one per rule)
            "samples": histogram(np.asarray(data.columns["complexity"]), HIST_BINS),  # each sample's own ratio
        },
        "columns": columns,
        "recipe": recipe,
    }


def sample_columns(data) -> dict[str, list]:
    """Per-sample metadata as JSON-ready lists: key, sample index, then every column of `data` (NaN -> None)."""
    n = data.num_samples
    cols = {"key": [sample_key(data.split, data.shard_index, i) for i in range(n)], "sample": list(range(n))}
    for name in sorted(data.columns):
        values = np.asarray(data.columns[name])
        assert values.shape == (n,), (name, values.shape, n)
        cols[name] = [_plain(v) for v in values.tolist()]
    return cols


def load_record(fs, root: str, split: str, index: int, recipe: str | None = None) -> dict | None:
    """The record of shard (split, index), or None when it is missing, unreadable or not nca-datagen's record of
    that shard (of `recipe`, when given: see `record_problem`). Its shard is not looked at."""
    try:
        record = json.loads(storage.read_bytes(fs, storage.join(root, record_name(split, index)), MAX_RECORD_BYTES))
    except (FileNotFoundError, ValueError):  # missing or unreadable: the shard is rebuilt
        return None
    return None if record_problem(record, split, index, recipe) else record


def record_problem(record, split: str, index: int, recipe: str | None = None) -> str | None:
    """Why `record` is not nca-datagen's record of shard (split, index) (made by `recipe`, when given), or None.
    Proof by content, never by file name: our exact fields, the canonical shard path, consistent sizes, hex
    digests. Another tool's `shard-000000.json` sidecar fails here."""
    if not isinstance(record, dict) or set(record) != RECORD_FIELDS:
        return "not an nca-datagen shard record (other fields)"
    if (record["split"], record["index"]) != (split, index):
        return f"it describes shard {record['split']!r}:{record['index']!r}"
    if record["compression"] not in COMPRESSIONS or record["path"] != shard_name(split, index, record["compression"]):
        return f"path {record['path']!r} is not {shard_name(split, index)!r} or its .tar twin"
    numbers = [record[k] for k in ("samples", "seq_len", "tokens", "bytes")]
    if not all(type(n) is int and n >= 0 for n in numbers) or record["tokens"] != record["samples"] * record["seq_len"]:
        return f"inconsistent sizes {numbers}"
    if record["bytes"] > max_shard_bytes(record["samples"], record["seq_len"]):
        return f"{record['bytes']} bytes, more than {record['samples']} samples can take"
    if not _is_hex(record["sha256"], 64) or not _is_hex(record["recipe"], 16):
        return "sha256 or recipe is not a hex digest"
    if recipe is not None and record["recipe"] != recipe:
        return f"made by another recipe ({record['recipe']}, not {recipe})"
    return None


def max_shard_bytes(samples: int, seq_len: int) -> int:
    """The most bytes a shard of `samples` sequences of `seq_len` tokens can take (tar or zstd): what a reader
    holds in memory at most, whatever a manifest or record from elsewhere claims."""
    per_sample = 2 * BLOCK + _blocks(MAX_JSON_MEMBER) + _blocks(NPY_HEADER + 2 * seq_len)
    tar = samples * per_sample + 2 * BLOCK + RECORD
    return tar + tar // 128 + 4096  # zstd's worst case adds ~1/256 and a frame header to incompressible input


def _blocks(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def _is_hex(value, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and _HEX.fullmatch(value) is not None


def iter_shard_samples(url_or_path: str, *, storage_options: dict | None = None, fs=None,
                       expected_sha256: str | None = None, expected_bytes: int | None = None,
                       seq_len: int | None = None) -> Iterator[tuple[str, np.ndarray, dict]]:
    """Yield (key, tokens uint16, meta) from one shard, in file order, without touching the local disk.

    `fs` (with a bare path) skips URL parsing when the caller already has a filesystem. With `expected_sha256`
    or `expected_bytes` the shard is checked before the first sample is yielded. `seq_len` bounds each token
    member to that many tokens and checks every sample has them. Any problem raises `ShardError` naming the file.
    """
    if fs is None:
        fs, path = storage.filesystem(url_or_path, storage_options)
    else:
        path = url_or_path
    name = storage.url_of(fs, path)
    limits = _member_limits(seq_len)
    try:
        if expected_sha256 is None and expected_bytes is None:
            with fs.open(path, "rb") as raw:
                yield from _iter_stream(raw, path, name, limits, seq_len)
        else:
            blob = read_shard_blob(fs, path, expected_sha256, expected_bytes)
            yield from _iter_stream(io.BytesIO(blob), path, name, limits, seq_len)
    except FileNotFoundError as exc:
        raise ShardError(f"{name}: shard is missing") from exc


def read_shard_blob(fs, path: str, expected_sha256: str | None, expected_bytes: int | None) -> bytes:
    """A shard's bytes, read whole (at most one byte past `expected_bytes`) and checked against its recorded
    size and sha256: ShardError naming the file when they differ, FileNotFoundError when it is missing."""
    limit = None if expected_bytes is None else expected_bytes + 1  # one byte more tells "too long"
    blob = storage.read_bytes(fs, path, limit)
    check_blob(blob, storage.url_of(fs, path), expected_sha256, expected_bytes)
    return blob


def iter_blob_samples(blob: bytes, name: str, seq_len: int | None = None) -> Iterator[tuple[str, np.ndarray, dict]]:
    """`iter_shard_samples` over a shard already in memory (checked by the caller); `name` is its file name or URL
    (a `.zst` suffix means zstd) for messages."""
    yield from _iter_stream(io.BytesIO(blob), name, name, _member_limits(seq_len), seq_len)


def shard_samples(data, columns=None) -> list[tuple[str, np.ndarray, dict]]:
    """The (key, tokens, meta) that `iter_shard_samples` yields from this shard's bytes, without building them:
    the same keys, uint16 tokens (views of `data.tokens_NL`) and metadata dicts (keys sorted, as the JSON member
    stores them). Tested equal to reading the written shard."""
    tokens = np.ascontiguousarray(data.tokens_NL, dtype=TOKEN_DTYPE)
    return [(key, tokens[i], meta) for i, (key, meta) in enumerate(sample_metas(data, columns or sample_columns(data)))]


def sample_metas(data, columns: dict[str, list]) -> Iterator[tuple[str, dict]]:
    """(key, metadata) per sample: what each KEY.json member holds (key, split, shard and every column), keys
    sorted as `compact_json` writes them."""
    names = [c for c in columns if c != "key"]
    for i, key in enumerate(columns["key"]):
        meta = {"key": key, "split": data.split, "shard": int(data.shard_index)}
        meta.update({c: columns[c][i] for c in names})
        yield key, dict(sorted(meta.items()))


def _member_limits(seq_len: int | None) -> dict[str, int]:
    """The largest member of each kind a shard may hold: what the format allows, never what a header claims."""
    tokens = MAX_MEMBER if seq_len is None else NPY_HEADER + 2 * seq_len
    return {"json": MAX_JSON_MEMBER, "tokens.npy": tokens}


def check_blob(blob: bytes, name: str, expected_sha256: str | None, expected_bytes: int | None) -> None:
    """Raise ShardError naming `name` if the bytes do not have the recorded size and sha256."""
    if expected_bytes is not None and len(blob) != expected_bytes:
        raise ShardError(f"{name}: {len(blob)} bytes, the manifest says {expected_bytes} (truncated or replaced)")
    if expected_sha256 is not None:
        digest = hashlib.sha256(blob).hexdigest()
        if digest != expected_sha256:
            raise ShardError(f"{name}: sha256 {digest[:16]}... does not match the manifest's "
                             f"{expected_sha256[:16]}... (corrupt or replaced)")


def parse_member_name(member: str, shard: str) -> tuple[str, str]:
    """'KEY.suffix' -> (KEY, suffix). Refuses anything but a plain file name (no '/', '..', absolute paths)."""
    if not _SAFE_MEMBER.fullmatch(member) or ".." in member:
        raise ShardError(f"{shard}: unsafe or unexpected member name {member!r} (expected KEY.json / KEY.tokens.npy)")
    key, suffix = member.split(".", 1)
    return key, suffix


def _iter_stream(raw, path: str, name: str, limits: dict[str, int], seq_len: int | None):
    import zstandard

    stream = raw
    if path.endswith(".zst"):
        stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    try:
        yield from _group_samples(_iter_members(stream, name, limits), name, seq_len)
    except ShardError:
        raise
    except (zstandard.ZstdError, EOFError, OSError, ValueError, MemoryError) as exc:
        raise ShardError(f"{name}: unreadable shard ({type(exc).__name__}: {exc})") from exc


def _iter_members(stream, name: str, limits: dict[str, int]):
    """(member name, bytes) of a ustar stream. A minimal reader (the format we write), 3x faster than `tarfile`:
    regular files only, names checked by `parse_member_name`, header checksums verified, sizes within `limits`
    (checked before a byte of the member is read)."""
    while True:
        header = _read_exact(stream, BLOCK, name)  # EOF before the end-of-archive block: truncated
        if header == ZERO_BLOCK:
            while stream.read(1 << 16):  # drain the padding, so zstd verifies its frame checksum at the end
                pass
            return
        if _checksum(header) != _octal(header[148:156], name):
            raise ShardError(f"{name}: tar header checksum mismatch (corrupt shard)")
        member = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            member = prefix.decode("utf-8", "replace") + "/" + member  # rejected below: members are plain names
        if header[156:157] not in (b"0", b"\0"):
            raise ShardError(f"{name}: member {member!r} is not a regular file")
        _, suffix = parse_member_name(member, name)
        size = _octal(header[124:136], name)
        if size > limits.get(suffix, 0):
            raise ShardError(f"{name}: member {member!r} claims {size:,} bytes, more than a {suffix} member may "
                             f"hold ({limits.get(suffix, 0):,})")
        data = _read_exact(stream, size, name)
        _read_exact(stream, -size % BLOCK, name)
        yield member, data


def _read_exact(stream, n: int, name: str) -> bytes:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise ShardError(f"{name}: unexpected end of data (truncated shard)")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _group_samples(members, name: str, seq_len: int | None):
    key, parts = None, {}
    for member, data in members:
        k, suffix = parse_member_name(member, name)
        if key is not None and k != key:
            yield _sample(key, parts, name, seq_len)
            parts = {}
        key = k
        parts[suffix] = data
    if key is not None:
        yield _sample(key, parts, name, seq_len)


def _sample(key: str, parts: dict, name: str, seq_len: int | None):
    if set(parts) != {"json", "tokens.npy"}:
        raise ShardError(f"{name}: sample {key} has members {sorted(parts)}, expected json and tokens.npy")
    try:
        tokens, meta = _load_npy(parts["tokens.npy"], name), json.loads(parts["json"])
    except Exception as exc:  # numpy's header parser raises SyntaxError and tokenize.TokenError, not only ValueError
        raise ShardError(f"{name}: sample {key} is unreadable ({type(exc).__name__}: {exc})") from exc
    if tokens.dtype != TOKEN_DTYPE or tokens.ndim != 1 or (seq_len is not None and tokens.size != seq_len):
        raise ShardError(f"{name}: sample {key} holds {tokens.dtype}{list(tokens.shape)}, expected uint16"
                         f"[{seq_len or 'N'}]")
    return key, tokens, meta


def _load_npy(data: bytes, name: str) -> np.ndarray:
    """`np.load(..., allow_pickle=False)` for version-1 .npy bytes, with the parsed header cached (np.load spends
    most of its time parsing the same header for every sample). Other versions go through np.load."""
    if data[:8] != b"\x93NUMPY\x01\x00":
        return np.load(io.BytesIO(data), allow_pickle=False)
    end = 10 + int.from_bytes(data[8:10], "little")
    dtype, shape = _npy_header(data[:end])
    return np.frombuffer(data, dtype=dtype, offset=end).reshape(shape).copy()


@functools.lru_cache(maxsize=64)
def _npy_header(header: bytes):
    stream = io.BytesIO(header)
    np.lib.format.read_magic(stream)
    shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    if dtype.hasobject or fortran:
        raise ValueError("token arrays must be plain C-ordered numbers (object arrays are never loaded)")
    return dtype, shape


def _tar_bytes(data, columns: dict[str, list]) -> bytes:
    """The shard's tar. Byte-identical to `tarfile` in USTAR format with our fixed member fields (tested), but
    built directly: `tarfile` spends ~0.25 ms per member in Python, which capped shard writing near 1M tokens/s."""
    tokens = np.ascontiguousarray(data.tokens_NL, dtype=TOKEN_DTYPE)
    npy_header = _npy_bytes(tokens[0])[: -tokens[0].nbytes] if len(tokens) else b""
    parts = []
    for i, (key, meta) in enumerate(sample_metas(data, columns)):
        parts += _member(f"{key}.json", compact_json(meta))
        parts += _member(f"{key}.tokens.npy", npy_header + tokens[i].tobytes())
    size = sum(len(p) for p in parts) + 2 * BLOCK  # two zero blocks end the archive ...
    return b"".join([*parts, ZERO_BLOCK * 2, b"\0" * (-size % RECORD)])  # ... padded to tarfile's record size


def _header_template() -> tuple[bytes, int]:
    """A member header with every fixed field set (name, size and checksum blank) and its byte sum."""
    header = bytearray(BLOCK)
    header[100:108] = b"0000644\0"  # mode
    header[108:116] = header[116:124] = b"0000000\0"  # uid, gid
    header[136:148] = b"00000000000\0"  # mtime 0
    header[148:156] = b" " * 8  # the checksum is summed with its own field as spaces
    header[156:157] = b"0"  # regular file
    header[257:265] = b"ustar\x0000"
    return bytes(header), sum(header)


HEADER_TEMPLATE, HEADER_TEMPLATE_SUM = _header_template()


def _member(name: str, payload: bytes) -> list[bytes]:
    raw = name.encode()
    assert len(raw) <= 100, name  # ustar name field; keys are short
    size = b"%011o\0" % len(payload)
    checksum = HEADER_TEMPLATE_SUM + sum(raw) + sum(size)  # the blank name and size fields are zeros
    header = b"".join([raw, HEADER_TEMPLATE[len(raw) : 124], size, HEADER_TEMPLATE[136:148],
                       b"%06o\0 " % checksum, HEADER_TEMPLATE[156:]])
    return [header, payload, b"\0" * (-len(payload) % BLOCK)]


def _checksum(header: bytes) -> int:
    """The ustar checksum: the header's byte sum with the checksum field counted as 8 spaces."""
    return sum(header[:148]) + 8 * 32 + sum(header[156:])


def _octal(field: bytes, name: str) -> int:
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise ShardError(f"{name}: malformed tar header (corrupt shard)") from None


def _npy_bytes(tokens: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(tokens, dtype=TOKEN_DTYPE), allow_pickle=False)
    return buf.getvalue()


def compact_json(obj) -> bytes:
    """The one JSON serialisation of sample metadata and shard records: sorted keys, no spaces, strict (no NaN)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _plain(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None  # strict JSON has no NaN; readers map None back to NaN for float columns
    return v


def _suffix(compression: str) -> str:
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression={compression!r}: choose one of {', '.join(COMPRESSIONS)}")
    return COMPRESSIONS[compression]
