"""Every fsspec store: URLs resolve through fsspec to the right filesystem with the right options, `memory://` works
end to end (build, verify, load, claim, publish both ways), stores without a claim are refused before anything is
read, and `publish` to a Hugging Face dataset repo makes one commit.

No Hub is reachable here, so the Hub tests give `publish` a stand-in for `huggingface_hub.HfApi` (`FakeHub`): the
four calls publish makes (repo_info, list_repo_files, hf_hub_download, create_commit), answering as the Hub does
(its error classes, the 412 of a moved parent commit) and recording each commit's operations, which the tests
check file by file against the dataset. The operations are huggingface_hub's own `CommitOperation*` objects.
"""

import hashlib
import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from shard_fixtures import FAKE, make_dataset

import nca_datagen
from nca_datagen import claim as claim_module
from nca_datagen import storage
from nca_datagen.claim import CLAIM, ClaimLost, LocationBusy, claim, claim_kind
from nca_datagen.cli import main
from nca_datagen.errors import ConfigError, OutputRefused, StorageError
from nca_datagen.loader import NCADataset
from nca_datagen.manifest import read_manifest
from nca_datagen.pipelines.hub import hub_target
from nca_datagen.pipelines.publish import publish
from nca_datagen.verify import verify_dataset

TINY = ["--complexity", "0.3:", "--grid", "6", "--states", "3", "--frames", "4", "--sims-per-rule", "2",
        "--samples-per-shard", "8", "--tokens", "500", "--quiet"]  # 3 shards in a second or two


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def memory_root(request):
    """A fresh memory:// folder (fsspec's memory store is one per process: each test takes its own name)."""
    import fsspec

    name = f"memory://{request.node.name.replace('[', '-').replace(']', '')}"
    yield name
    fs, root = fsspec.filesystem("memory"), storage.filesystem(name)[1]
    if fs.exists(root):
        fs.rm(root, recursive=True)


# ------------------------------------------------------------------------------------------------ routing


def test_local_paths_and_file_urls_are_absolute_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for url in ("data/x", f"file://{tmp_path}/data/x", str(tmp_path / "data" / "x")):
        fs, root = storage.filesystem(url)
        assert storage.scheme(fs) == "file" and root == str(tmp_path / "data" / "x")
        assert storage.url_of(fs, root) == root and storage.access_hint(fs) == "a writable output folder"


S3_FLAGS = {"endpoint_url": "http://127.0.0.1:9", "profile": "p", "checksums": "when_required"}


@pytest.mark.parametrize("url, cls, root, back", [
    ("s3://bucket/ds", "s3fs:S3FileSystem", "bucket/ds", "s3://bucket/ds"),
    ("s3a://bucket/ds/", "s3fs:S3FileSystem", "bucket/ds", "s3://bucket/ds"),
    ("memory://scratch/ds", "fsspec.implementations.memory:MemoryFileSystem", "/scratch/ds", "memory://scratch/ds"),
    ("gs://bucket/ds", "gcsfs:GCSFileSystem", "bucket/ds", "gs://bucket/ds"),
    ("gcs://bucket/ds", "gcsfs:GCSFileSystem", "bucket/ds", "gs://bucket/ds"),
    ("az://container/ds", "adlfs:AzureBlobFileSystem", "container/ds", "az://container/ds"),
    ("abfs://container/ds", "adlfs:AzureBlobFileSystem", "container/ds", "az://container/ds"),
    ("hf://datasets/org/name", "huggingface_hub:HfFileSystem", "datasets/org/name", "hf://datasets/org/name"),
], ids=["s3", "s3a", "memory", "gs", "gcs", "az", "abfs", "hf"])
def test_each_scheme_resolves_through_fsspec(url, cls, root, back):
    module, name = cls.split(":")
    package = module.split(".")[0]
    extra = {"gcsfs": "gcs", "adlfs": "azure", "huggingface_hub": "hf"}.get(package)
    pytest.importorskip(package, reason=f"{package} is not installed (pip install 'nca-datagen[{extra}]')")
    # credentials that need no network to construct the client: anonymous GCS, a named Azure account
    given = {"gs": {"token": "anon"}, "gcs": {"token": "anon"}, "az": {"account_name": "acct"},
             "abfs": {"account_name": "acct"}, "hf": {"token": "hf_test"}}.get(url.split(":")[0], {})
    fs, path = storage.filesystem(url, {**S3_FLAGS, **given})
    assert isinstance(fs, getattr(importlib.import_module(module), name))
    assert path == root and storage.url_of(fs, path) == back
    assert storage.filesystem(back, {**S3_FLAGS, **given})[1] == root  # the URL messages give resolves the same
    if storage.is_s3(fs):
        assert fs.storage_options == storage.s3_kwargs(S3_FLAGS)
        assert fs.storage_options["endpoint_url"] == S3_FLAGS["endpoint_url"]
    else:  # the S3 flags reach S3 alone; the store's own options pass as they are, listings never cached
        assert fs.storage_options == {**given, "use_listings_cache": False}
        assert "endpoint" not in storage.access_hint(fs)


def test_azure_account_in_the_url_reaches_adlfs():
    adlfs = pytest.importorskip("adlfs", reason="adlfs is not installed (pip install 'nca-datagen[azure]')")
    fs, root = storage.filesystem("abfs://container@myaccount.dfs.core.windows.net/ds")
    assert isinstance(fs, adlfs.AzureBlobFileSystem) and fs.account_name == "myaccount" and root == "container/ds"


def test_empty_segments_and_unknown_schemes_are_refused():
    for url in ("gs://bucket//x", "az://", "memory://a//b", "hf://datasets//x"):
        with pytest.raises(ValueError, match="empty bucket or path segment"):
            storage.filesystem(url)
    with pytest.raises(StorageError, match=r"unknown URL scheme nosuch://.*gs://"):
        storage.filesystem("nosuch://bucket/x")


def test_a_missing_store_package_names_its_extra():
    """A fresh interpreter where gcsfs, adlfs and huggingface_hub cannot be imported."""
    code = ("import sys\n"
            "for name in ('gcsfs', 'adlfs', 'huggingface_hub'): sys.modules[name] = None\n"
            "from nca_datagen import storage\n"
            "for url in ('gs://b/x', 'az://c/x', 'hf://datasets/o/n'):\n"
            "    try:\n"
            "        storage.filesystem(url)\n"
            "    except ValueError as exc:\n"
            "        print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["gs:// needs gcsfs: pip install 'nca-datagen[gcs]'",
                                       "az:// needs adlfs: pip install 'nca-datagen[azure]'",
                                       "hf:// needs huggingface_hub: pip install 'nca-datagen[hf]'"]


# ------------------------------------------------------------------------------------------------ claims


def test_each_store_has_its_claim_or_is_refused_before_anything_is_read(tmp_path):
    kinds = {url: claim_kind(*storage.filesystem(url, opts)) for url, opts in [
        (str(tmp_path), None), ("s3://b/x", None), ("memory://b/x", None)]}
    assert list(kinds.values()) == ["lock", "lease", "create"]
    assert claim_module.CLAIM_KINDS["gs"] == claim_module.CLAIM_KINDS["az"] == "create"
    # no server answers at port 9: a refusal that read anything would fail on the connection instead
    with pytest.raises(StorageError, match=r"no claim for http:// outputs.*memory://"):
        nca_datagen.build("http://127.0.0.1:9/ds", tokens="500", executor="inline")
    with pytest.raises(StorageError, match=r"written by `publish` alone.*nca-datagen publish FOLDER hf://datasets/o/n"):
        nca_datagen.build("hf://datasets/o/n", tokens="500", executor="inline")


def test_a_memory_claim_keeps_a_second_writer_out_and_notices_its_loss(memory_root, monkeypatch):
    url = f"{memory_root}/ds"
    with claim(url, doing="build", command="first") as held:
        with (pytest.raises(LocationBusy, match=rf"being written by .*`first`.*delete {url}/{CLAIM} and rerun"),
              claim(url + "/", doing="publish")):
            pass
        result = cli("build", *TINY, "--executor", "inline", "--out", url)
        assert result.exit_code == 1 and "is being written by" in result.output
        monkeypatch.setattr(claim_module, "CHECK_EVERY_S", 0.0)
        held.check()
        fs, root = storage.filesystem(url)
        storage.remove_files(fs, [storage.join(root, CLAIM)])  # removed by hand while it runs
        with pytest.raises(ClaimLost, match="was removed or replaced"):
            held.check()
    with claim(url, doing="build"):  # let go: the next writer gets it at once
        pass
    assert not storage.exists(*storage.filesystem(f"{url}/{CLAIM}"))


# ------------------------------------------------------------------------------------------------ memory://


def test_memory_store_end_to_end(memory_root, tmp_path):
    url = f"{memory_root}/ds"
    refused = cli("build", *TINY, "--out", url)  # Ray's workers are other processes: they cannot see this memory
    assert refused.exit_code == 2 and "--executor inline" in refused.output
    built = cli("build", *TINY, "--executor", "inline", "--out", url)
    assert built.exit_code == 0, built.output
    assert cli("verify", url).exit_code == 0
    manifest = read_manifest(url)
    keys = sorted(sample["key"] for sample in NCADataset(url, raw=True, shuffle=False))
    assert len(keys) == manifest["splits"]["train"]["samples"]

    local, back = tmp_path / "copy", f"{memory_root}/back"
    for src, dst in ((url, local), (local, back)):
        result = cli("publish", src, dst)
        assert result.exit_code == 0, result.output
    assert cli("verify", str(local)).exit_code == 0 and cli("verify", back).exit_code == 0
    fs, root = storage.filesystem(back)
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        rel = str(path.relative_to(local))
        assert storage.read_bytes(fs, storage.join(root, rel)) == path.read_bytes(), rel
    assert not fs.exists(storage.join(root, CLAIM)) and not fs.exists(storage.join(root, "build.json"))
    again = cli("publish", local, back)
    assert again.exit_code == 0 and "0 shards uploaded" in again.output


# ------------------------------------------------------------------------------------------------ the Hub


class FakeHub:
    """`huggingface_hub.HfApi` at the boundary publish uses: one dataset repo, its files and its commits."""

    def __init__(self, repo_id: str, files: dict[str, bytes] | None, tmp_path):
        self.repo_id, self.tmp_path = repo_id, tmp_path
        self.files = {".gitattributes": b"*.zst filter=lfs diff=lfs merge=lfs -text\n", **(files or {})}
        self.commits: list[dict] = []
        self.head = self._sha("initial")
        self.land_before_commit: dict[str, bytes] | None = None  # another writer's commit, landing meanwhile

    def repo_info(self, repo_id, *, repo_type, revision=None, **_):
        from huggingface_hub.errors import RepositoryNotFoundError

        if (repo_id, repo_type) != (self.repo_id, "dataset"):
            raise RepositoryNotFoundError("404 Repository Not Found", response=_response(404))
        return SimpleNamespace(sha=self.head)

    def list_repo_files(self, repo_id, *, repo_type, revision=None, **_):
        assert (repo_id, repo_type, revision) == (self.repo_id, "dataset", self.head)
        return sorted(self.files)

    def hf_hub_download(self, repo_id, filename, *, repo_type, revision=None, **_):
        assert (repo_id, repo_type, revision) == (self.repo_id, "dataset", self.head)
        path = self.tmp_path / "hub-download" / revision / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.files[filename])
        return str(path)

    def create_commit(self, repo_id, operations, *, commit_message, repo_type, revision=None, parent_commit=None,
                      **_):
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete
        from huggingface_hub.errors import HfHubHTTPError

        if self.land_before_commit is not None:
            self.files.update(self.land_before_commit)
            self.head, self.land_before_commit = self._sha("theirs"), None
        if parent_commit is not None and parent_commit != self.head:
            raise HfHubHTTPError("412 Precondition Failed: A commit has happened since", response=_response(412))
        adds, deletes = [], []
        for op in operations:
            if isinstance(op, CommitOperationAdd):
                data = op.path_or_fileobj
                adds.append((op.path_in_repo, data if isinstance(data, bytes) else Path(data).read_bytes()))
            else:
                assert isinstance(op, CommitOperationDelete)
                deletes.append(op.path_in_repo)
        self.commits.append({"message": commit_message, "revision": revision, "parent": parent_commit,
                             "adds": adds, "deletes": deletes})
        for path in deletes:
            del self.files[path]
        self.files.update(adds)
        self.head = self._sha(f"commit {len(self.commits)}")
        return SimpleNamespace(oid=self.head)

    def _sha(self, what: str) -> str:
        return hashlib.sha1(what.encode()).hexdigest()


def _response(status: int):
    """An HTTP response for the Hub's error classes, built by the HTTP library huggingface_hub itself uses."""
    from huggingface_hub.errors import HfHubHTTPError

    http = importlib.import_module(HfHubHTTPError.__mro__[1].__module__.split(".")[0])
    return http.Response(status, request=http.Request("POST", "https://huggingface.co/api/datasets/org/nca"))


def dataset_files(folder) -> dict[str, bytes]:
    """What a dataset folder holds, the manifest's way: relative path -> bytes (event logs are not data)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not str(p.relative_to(folder)).startswith("_logs")}


def materialize(hub: FakeHub, folder, prefix: str = ""):
    """The repo's files under `prefix`, written to a local folder (what a reader of the repo would get)."""
    for path, data in hub.files.items():
        if path.startswith(prefix):
            (folder / path[len(prefix):]).parent.mkdir(parents=True, exist_ok=True)
            (folder / path[len(prefix):]).write_bytes(data)
    return folder


def test_hub_urls_name_a_dataset_repo():
    assert hub_target("s3://b/x") is None
    target = hub_target("hf://datasets/org/nca@dev/v1/")
    assert (target.repo_id, target.revision, target.folder, target.path("manifest.json")) == \
        ("org/nca", "dev", "v1", "v1/manifest.json")
    assert hub_target("hf://datasets/org/nca").url == "hf://datasets/org/nca"
    for url in ("hf://models/org/nca", "hf://datasets/nca", "hf://datasets/org/nca/a//b"):
        with pytest.raises(ConfigError, match="hf://datasets/ORG/NAME"):
            hub_target(url)


def test_publish_to_the_hub_is_one_commit_with_the_manifest_last(tmp_path):
    src = tmp_path / "src"
    make_dataset(str(src), {"train": 3, "val": 1})
    hub = FakeHub("org/nca", None, tmp_path)
    initial = hub.head
    stats = publish(str(src), "hf://datasets/org/nca", hub_api=hub, echo=lambda line: None, command="cmd")
    assert stats == {"uploaded": 4, "skipped": 0, "files": 3}  # samples/{train,val}.parquet, README.md
    (commit,) = hub.commits
    assert commit["parent"] == initial and commit["revision"] is None and commit["deletes"] == []
    assert commit["message"] == "nca-datagen: cmd"
    want = dataset_files(src)
    assert [path for path, _ in commit["adds"]][-1] == "manifest.json"
    assert dict(commit["adds"]) == want and len(commit["adds"]) == len(want)
    assert sorted(want) == sorted(["README.md", "manifest.json", "samples/train.parquet", "samples/val.parquet",
                                   *(f"train/shard-00000{i}.{ext}" for i in range(3) for ext in ("json", "tar.zst")),
                                   "val/shard-000000.json", "val/shard-000000.tar.zst"])
    assert verify_dataset(str(materialize(hub, tmp_path / "read-back")), echo=lambda line: None) == []

    assert publish(str(src), "hf://datasets/org/nca", hub_api=hub, echo=lambda line: None)["uploaded"] == 0
    assert len(hub.commits) == 1  # the same dataset, whole: nothing to commit
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["provenance"] = {**manifest.get("provenance", {}), "created": "2000-01-01T00:00:00Z"}  # a rebuild
    (src / "manifest.json").write_text(json.dumps(manifest))
    publish(str(src), "hf://datasets/org/nca", hub_api=hub, echo=lambda line: None)
    assert [path for path, _ in hub.commits[-1]["adds"]] == ["manifest.json"] and not hub.commits[-1]["deletes"]
    assert hub.files["manifest.json"] == (src / "manifest.json").read_bytes()


def test_publish_to_the_hub_replaces_another_dataset_in_one_commit_and_keeps_other_files(tmp_path):
    import dataclasses

    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    make_dataset(str(v1), {"train": 2, "val": 1})
    make_dataset(str(v2), {"train": 1}, compression="none", config=dataclasses.replace(FAKE, seed=9))
    hub = FakeHub("org/nca", {"README.md": b"# the repo's card"}, tmp_path)
    quiet = {"hub_api": hub, "echo": lambda line: None}
    publish(str(v1), "hf://datasets/org/nca/data", **quiet)  # a folder of the repo: files outside it are not looked at
    assert [path for path, _ in hub.commits[0]["adds"]][-1] == "data/manifest.json"
    hub.files["data/notes.txt"], hub.head = b"theirs", hub._sha("a commit of theirs")
    with pytest.raises(OutputRefused, match=r"holds another finished dataset.*--overwrite"):
        publish(str(v2), "hf://datasets/org/nca/data", **quiet)
    assert len(hub.commits) == 1
    publish(str(v2), "hf://datasets/org/nca/data", overwrite=True, **quiet)
    replace = hub.commits[1]
    old, new = set(dataset_files(v1)), set(dataset_files(v2))
    assert sorted(replace["deletes"]) == sorted(f"data/{rel}" for rel in old - new)
    assert {path for path, _ in replace["adds"]} == {f"data/{rel}" for rel in new}
    assert sorted(hub.files) == sorted([".gitattributes", "README.md", "data/notes.txt",
                                        *(f"data/{rel}" for rel in new)])
    assert verify_dataset(str(materialize(hub, tmp_path / "read-back", "data/")), echo=lambda line: None) == []


def test_publish_to_the_hub_refuses_someone_elses_repo_and_a_race(tmp_path):
    src = tmp_path / "src"
    make_dataset(str(src), {"train": 1})
    theirs = FakeHub("org/nca", {"README.md": b"# my model card", "train/shard-000000.tar": b"x"}, tmp_path)
    with pytest.raises(OutputRefused, match=r"README.md, train/shard-000000.tar.*someone else's"):
        publish(str(src), "hf://datasets/org/nca", hub_api=theirs, echo=lambda line: None)
    assert theirs.commits == []

    raced = FakeHub("org/nca", None, tmp_path)
    raced.land_before_commit = {"other.txt": b"another writer's commit"}
    with pytest.raises(LocationBusy, match=r"another commit landed.*nothing of it was committed"):
        publish(str(src), "hf://datasets/org/nca", hub_api=raced, echo=lambda line: None)
    assert raced.commits == [] and "manifest.json" not in raced.files

    with pytest.raises(StorageError, match=r"no such dataset repo.*hf repos create org/other --repo-type dataset"):
        publish(str(src), "hf://datasets/org/other", hub_api=raced, echo=lambda line: None)
