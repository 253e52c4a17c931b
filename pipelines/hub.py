"""Publishing to the Hugging Face Hub: a finished dataset lands in a dataset repo in one commit.

`nca-datagen publish SRC hf://datasets/ORG/NAME` (optionally `@REVISION`, a branch, and `/FOLDER` inside the repo)
stages SRC's verified files in a local folder, then makes one commit with `HfApi.create_commit`: every shard,
record, table and card file, the manifest last, and the deletion of the files of an older dataset it replaces.
huggingface_hub uploads the files in batches before the commit names them (content-addressed: a file the Hub
holds already is not sent again); a commit is atomic, so readers see the old dataset or the new one, never a mix.

- One writer: the commit's parent is the revision this publish inspected (`parent_commit`), and the Hub refuses it
  (HTTP 412) when another commit landed meanwhile: of two racing publishes one fails, and nothing of it shows.
- Ownership, as for any DST: the repo (or FOLDER in it) holds nothing but `.gitattributes`, or a dataset of ours
  (its `manifest.json`). Another dataset of ours is replaced only with --overwrite, its files that the new one
  lacks deleted in the same commit; files not ours stay. The same data complete: nothing to commit.
- The repo must exist (`hf repos create ORG/NAME --repo-type dataset`): its visibility is its owner's choice. The
  token is huggingface_hub's: HF_TOKEN or `hf auth login`.

The trade-off: the whole dataset is staged on local disk before the commit (which uploads files by path), the
price of committing only bytes that were checked after they were read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from nca_datagen import storage
from nca_datagen.errors import ConfigError, LocationBusy, OutputRefused, StorageError
from nca_datagen.manifest import MANIFEST, dataset_digest
from nca_datagen.ownership import digest_or_none, our_manifest, owned_path, refuse_foreign

HUB_FILES = (".gitattributes",)  # what the Hub puts in a new repo: neither ours nor anyone's data
TARGET = re.compile(r"hf://datasets/([^/@]+/[^/@]+)(?:@([^/]+))?(/.*)?")
PARENT_MOVED = 412  # the Hub's answer to a commit whose parent_commit is no longer the revision's head


@dataclass(frozen=True)
class HubTarget:
    """Where a publish commits: a dataset repo, its revision (None: the default branch), a folder in it ('')."""

    repo_id: str
    revision: str | None
    folder: str

    def path(self, rel: str) -> str:
        return f"{self.folder}/{rel}" if self.folder else rel

    @property
    def url(self) -> str:
        revision = f"@{self.revision}" if self.revision else ""
        return f"hf://datasets/{self.repo_id}{revision}{'/' + self.folder if self.folder else ''}"


@dataclass
class HubState:
    """What the repo holds at the commit `head`: its files under the target's folder (relative to it) and our
    manifest there, parsed and as bytes (None when there is none of ours)."""

    head: str
    files: list[str]
    manifest: dict | None = None
    manifest_bytes: bytes | None = None


def hub_target(url: str) -> HubTarget | None:
    """The target of an hf:// URL (None for any other URL); ConfigError for one that names no dataset repo."""
    if not str(url).startswith("hf://"):
        return None
    match = TARGET.fullmatch(str(url).rstrip("/"))
    folder = (match.group(3) or "").strip("/") if match else ""
    if match is None or "//" in folder:
        raise ConfigError(f"{url}: publish writes a Hugging Face dataset repo: hf://datasets/ORG/NAME, optionally "
                          f"@BRANCH and /FOLDER after it")
    return HubTarget(match.group(1), unquote(match.group(2)) if match.group(2) else None, folder)


def client(api=None):
    """`api`, else a `huggingface_hub.HfApi` with the token huggingface_hub finds (HF_TOKEN, `hf auth login`)."""
    if api is not None:
        return api
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise storage.missing_package("hf") from None
    return HfApi()


def read_state(api, target: HubTarget) -> HubState:
    """The repo's head commit, its files under the target's folder, and our manifest there."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        head = api.repo_info(target.repo_id, repo_type="dataset", revision=target.revision).sha
    except RepositoryNotFoundError:
        raise StorageError(f"{target.url}: no such dataset repo, or this token may not see it; create it with `hf "
                           f"repos create {target.repo_id} --repo-type dataset` (add --private to keep it so), and "
                           f"check {storage.HINTS['hf']}") from None
    except RevisionNotFoundError:
        raise StorageError(f"{target.url}: the repo has no branch {target.revision!r}; create it first (`hf repos "
                           f"branch create {target.repo_id} {target.revision} --repo-type dataset`)") from None
    prefix = target.path("")
    files = [name[len(prefix):] for name in api.list_repo_files(target.repo_id, repo_type="dataset", revision=head)
             if name.startswith(prefix)]
    state = HubState(head, files)
    if MANIFEST in files:
        fs, local = storage.filesystem(api.hf_hub_download(target.repo_id, target.path(MANIFEST),
                                                           repo_type="dataset", revision=head))
        if (manifest := our_manifest(fs, local)) is not None:  # its size checked: ours to hold in memory
            state.manifest, state.manifest_bytes = manifest, storage.read_bytes(fs, local)
    return state


def stale_files(state: HubState, target: HubTarget, manifest: dict, dataset_files: set[str],
                overwrite: bool) -> set[str] | None:
    """The files of an older dataset this commit deletes, or None when the repo holds this very dataset whole
    (only its manifest may change: a rebuild's provenance). OutputRefused for files not ours without a dataset of
    ours, and for another dataset without `overwrite`."""
    if state.manifest is None:
        foreign = [name for name in state.files if name not in HUB_FILES]
        if foreign:
            refuse_foreign(target.url, foreign)
        return set()
    if digest_or_none(state.manifest) == dataset_digest(manifest):
        return None if dataset_files <= set(state.files) else set()
    if not overwrite:
        raise OutputRefused(f"{target.url} holds another finished dataset (its manifest.json lists other shards); "
                            f"pass --overwrite to replace it in one commit, or publish to another repo or folder")
    return {name for name in state.files if owned_path(name) and name not in dataset_files and name != MANIFEST}


def commit(api, target: HubTarget, head: str, staging: str, files: set[str], stale: set[str],
           manifest_bytes: bytes, message: str) -> str:
    """One commit on top of `head`: the deletions, then `files` from the folder `staging`, the manifest last.
    Returns the commit's id; LocationBusy when another commit landed on the branch since `head`."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete
    from huggingface_hub.errors import HfHubHTTPError

    operations = [CommitOperationDelete(target.path(rel)) for rel in sorted(stale)]  # (a commit applies all at once)
    operations += [CommitOperationAdd(target.path(rel), storage.join(staging, rel)) for rel in sorted(files)]
    operations.append(CommitOperationAdd(target.path(MANIFEST), manifest_bytes))
    try:
        info = api.create_commit(target.repo_id, operations, commit_message=message, repo_type="dataset",
                                 revision=target.revision, parent_commit=head)
    except HfHubHTTPError as exc:
        if getattr(getattr(exc, "response", None), "status_code", None) != PARENT_MOVED:
            raise
        raise LocationBusy(f"{target.url}: another commit landed on the repo while this publish ran (after "
                           f"{head[:12]}), so the Hub refused this one and nothing of it was committed; see the "
                           f"repo's history, then rerun to publish over it") from None
    return info.oid
