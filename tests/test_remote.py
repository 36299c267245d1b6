"""Object storage: publish a dataset and its stores under s3://, stage it per node, read
packed rows by ranged GETs (an S3 API server on 127.0.0.1: moto)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import disktrain
from disktrain.errors import DataError
from disktrain.loader.pipeline import PackedLoader
from disktrain.storage.objstore import MANIFEST, Remote, RemoteError
from disktrain.storage.remote import MARKER, fetch_missing, publish, stage


def _batches(path):
    loader = PackedLoader(path)
    try:
        return [(mb.x.clone(), [torch.stack([b.src, b.dst]) for b in mb.blocks], mb.labels.clone())
                for mb in loader(range(loader.num_batches))]
    finally:
        loader.close()


def test_staged_dataset_reads_the_same_batches(prepared, s3, tmp_path):
    url = f"{s3}/tiny"
    manifest = publish(prepared, url)
    assert "packed/zarr.json" in manifest["files"] and ".lock" not in manifest["files"]
    local = stage(url, tmp_path / "node1")
    assert local != prepared and (local / MARKER).exists()
    shards = [r for r in manifest["files"] if r.startswith("packed/rows/c.")]
    assert shards and not any((local / r).exists() for r in shards)  # never downloaded
    assert not list((local / "samples").rglob("g0*"))  # a node fetches the groups it reads
    want, got = _batches(prepared), _batches(local)
    assert len(want) == len(got)
    for (x0, e0, y0), (x1, e1, y1) in zip(want, got):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
        assert all(torch.equal(a, b) for a, b in zip(e0, e1))
    assert not any((local / r).exists() for r in shards)  # read by ranged GETs only
    assert any((local / "samples").rglob("c/0"))  # sample groups fetched and kept
    mine, theirs = (disktrain.Loader(p, plan_reuse="cycle") for p in (url, prepared))
    try:  # the public loader takes the URL
        assert mine.dataset_dir == stage(url) and len(mine) == len(theirs) > 1
        assert all(torch.equal(a.x, b.x) for a, b in zip(mine, theirs))
    finally:
        mine.close()
        theirs.close()


def test_ranged_reads_fetch_what_batches_need(prepared, s3, tmp_path):
    from disktrain.pack.store import PackedStore

    url = f"{s3}/tiny"
    publish(prepared, url)
    store = PackedStore(stage(url, tmp_path / "node"))
    files = store.layout.remote
    assert files is not None
    opened = files.requests
    for b in range(store.num_batches):
        want = PackedStore(prepared).read_packed(b).copy()
        assert np.array_equal(store.read_packed(b), want)
    assert files.requests - opened == store.num_batches  # one GET per batch (one shard)
    padded = int(store.batch_rows[-1]) // store.chunk_rows * store.chunk_stride
    assert files.bytes - store.layout.num_shards * store.layout.index_bytes == padded


def test_stage_reuses_a_copy_and_replaces_an_old_one(prepared, s3, tmp_path):
    url = f"{s3}/tiny"
    first = publish(prepared, url)
    local = stage(url, tmp_path)
    stamp = (local / "zarr.json").stat().st_mtime_ns
    assert stage(url, tmp_path) == local and (local / "zarr.json").stat().st_mtime_ns == stamp
    second = publish(prepared, url)  # nothing changed: no upload, a new manifest
    assert second["files"] == first["files"] and second["manifest_id"] != first["manifest_id"]
    assert stage(url, tmp_path) == local
    assert json.loads((local / MARKER).read_text())["manifest_id"] == second["manifest_id"]
    # a new manifest: the files it names unchanged are kept (fetched ones too), others fetched
    fetched = local / "features" / "c" / "0" / "0"
    assert fetch_missing(fetched) and fetched.is_file()
    kept = {p: (local / p).stat().st_ino for p in ("features/zarr.json", "features/c/0/0")}
    meta = json.loads((prepared / "zarr.json").read_text())
    meta["attributes"]["note"] = "changed"
    (prepared / "zarr.json").write_text(json.dumps(meta))
    third = publish(prepared, url)
    assert third["files"]["zarr.json"] != second["files"]["zarr.json"]
    inode = (local / "zarr.json").stat().st_ino
    assert stage(url, tmp_path) == local
    assert {p: (local / p).stat().st_ino for p in kept} == kept
    assert (local / "zarr.json").stat().st_ino != inode
    assert json.loads((local / "zarr.json").read_text())["attributes"]["note"] == "changed"


def test_publish_deletes_objects_no_manifest_names_under_the_stores(prepared, s3, tmp_path):
    """What an interrupted run's tasks uploaded for a configuration it never published
    (shards, sample groups, eval stores) goes with the next publish; the user's own objects
    beside the dataset stay."""
    url = f"{s3}/tiny"
    first = publish(prepared, url)
    rem = Remote.of(url)
    stores = ("packed", "samples", "eval", "packed.pieces")
    orphans = ["packed/rows/c.999", "samples/groups/g999999/nodes/c/0",
               "eval/val/packed/rows/c.0", "packed.pieces/c.0.0"]
    for rel in orphans + ["notes/README.txt"]:
        rem.put_bytes(rel, b"left by an interrupted run")
    assert set(orphans) <= {r for top in stores for r in rem.listing(top)}
    second = publish(prepared, url)
    assert second["files"] == first["files"]
    assert {r for top in stores for r in rem.listing(top)} == \
        {r for r in first["files"] if r.split("/")[0] in stores}
    assert rem.listing("notes") == ["notes/README.txt"]  # not a store's: kept
    assert np.array_equal(np.asarray(_batches(stage(url, tmp_path))[0][0]),
                          np.asarray(_batches(prepared)[0][0]))


def test_a_corrupted_object_is_refused(prepared, s3, tmp_path):
    url = f"{s3}/tiny"
    publish(prepared, url)
    rem = Remote.of(url)
    with rem.fs.open_output_stream(rem.key("labels/zarr.json")) as f:
        f.write(b"{}")
    with pytest.raises(RemoteError, match=r"labels/zarr.json: downloaded 2 bytes"):
        stage(url, tmp_path / "node")
    left = [p.name for p in (tmp_path / "node").iterdir()]
    assert len(left) == 1 and left[0].endswith(".stage-lock")  # nothing half-staged


def test_a_prefix_without_manifest_is_incomplete(prepared, s3, tmp_path):
    url = f"{s3}/tiny"
    publish(prepared, url)
    rem = Remote.of(url)
    rem.fs.delete_file(rem.key(MANIFEST))
    with pytest.raises(RemoteError, match="no disktrain-manifest.json: not a complete"):
        stage(url, tmp_path)


def test_errors_name_the_url(prepared, s3, monkeypatch, tmp_path):
    with pytest.raises(RemoteError, match=r"s3://no-such-bucket-x/ds: the bucket .* does not"):
        publish(prepared, "s3://no-such-bucket-x/ds")
    with pytest.raises(DataError, match=f"{tmp_path}: not a disktrain dataset"):
        publish(tmp_path, f"{s3}/x")
    with pytest.raises(RemoteError, match="not a bare bucket"):
        stage(s3)
    with pytest.raises(RemoteError, match="credentials or options in the URL") as e:
        stage("s3://AKIA:SECRET@bucket/ds")
    assert "SECRET" not in str(e.value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # the standard AWS variable: no retries
    with pytest.raises(RemoteError, match=r"s3://b/ds: .*cannot reach the endpoint"):
        stage("s3://b/ds")


def test_denied_requests_name_the_url(prepared, s3, s3_server, monkeypatch, tmp_path):
    """With IAM checked (moto's simulation): a user without a policy is denied, an unknown
    access key is refused; each error names the URL and says what to check."""
    import boto3
    from moto.core.authorization import enable_iam_authentication

    url = f"{s3}/tiny"
    publish(prepared, url)
    iam = boto3.client("iam", endpoint_url=s3_server.endpoint, region_name="us-east-1")
    user = f"u-{Path(s3).name}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with enable_iam_authentication():
        with pytest.raises(RemoteError, match=f"{url}: .*access denied"):
            stage(url, tmp_path / "denied")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7NOTAKEY")
        with pytest.raises(RemoteError, match=f"{url}: .*(access denied|not valid)") as e:
            publish(prepared, url)  # (a HEAD's 403 has no body: denied, whatever the cause)
    assert key["SecretAccessKey"] not in str(e.value)
    assert not (tmp_path / "denied").exists()  # nothing staged


def test_cli_synth_prepare_train_on_s3(s3, tmp_path, capsys):
    from disktrain.cli import main

    url = f"{s3}/cli"
    assert main(["synth", "--out", url, "--nodes", "400", "--feature-dim", "4", "--classes",
                 "3", "--no-progress"]) == 0
    assert not (tmp_path / "s3:").exists()  # a URL is never a local directory
    assert f"published {url}: " in capsys.readouterr().out
    assert Remote.of(url).manifest()["files"]["features/zarr.json"]
    with pytest.raises(SystemExit):
        main(["synth", "--out", url, "--nodes", "400", "--no-progress"])
    assert "already holds a published dataset" in capsys.readouterr().err
    assert main(["prepare", url, "--fanouts", "3,3", "--batch-size", "64", "--epochs", "2",
                 "--no-progress"]) == 0
    files = Remote.of(url).manifest()["files"]
    assert "packed/zarr.json" in files and "eval/val/packed/zarr.json" in files
    assert "features/c/0/0" in files  # kept though this node's stage may not hold it
    capsys.readouterr()
    node2 = tmp_path / "node2"
    env_stage = {"DISKTRAIN_STAGE_DIR": str(node2)}
    with pytest.MonkeyPatch.context() as m:
        for k, v in env_stage.items():
            m.setenv(k, v)
        assert main(["train", url, "--epochs", "2", "--hidden", "8", "--no-progress",
                     "--metrics", f"{url}/runs/metrics.jsonl"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["epochs"] == 2 and 0 <= result["val_acc"] <= 1
    staged = next(p for p in node2.glob("*_cli-*") if p.is_dir() and p.suffix != ".run")
    assert not any(staged.glob("packed/rows/c.*"))  # packed rows read by ranged GETs
    assert any(staged.with_name(f"{staged.name}.run").glob("checkpoints/*"))
    rem = Remote.of(url)
    with rem.fs.open_input_stream(rem.key("runs/metrics.jsonl")) as f:
        lines = f.read().decode().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]


def test_cli_publish_and_stage(prepared, s3, capsys, tmp_path):
    from disktrain.cli import main

    url = f"{s3}/pub"
    assert main(["publish", str(prepared), url, "--no-progress"]) == 0
    sent = json.loads(capsys.readouterr().out)
    assert sent["files"] == len(Remote.of(url).manifest()["files"]) > 10
    assert main(["stage", url]) == 0
    local = capsys.readouterr().out.strip()
    assert json.loads((Path(local) / MARKER).read_text())["url"] == url
    with pytest.raises(SystemExit):
        main(["publish", str(prepared), str(tmp_path / "x")])
    assert "must be an object-store URL" in capsys.readouterr().err


@pytest.mark.slow
def test_typed_dataset_on_s3(s3, capsys, tmp_path, monkeypatch):
    from disktrain.cli import main

    url = f"{s3}/igbh"
    assert main(["synth", "--typed", "igbh", "--out", url, "--papers", "200",
                 "--no-progress"]) == 0
    assert main(["prepare", url, "--fanouts", "3,2", "--batch-size", "32",
                 "--no-progress"]) == 0
    monkeypatch.setenv("DISKTRAIN_STAGE_DIR", str(tmp_path / "node2"))
    capsys.readouterr()
    assert main(["train", url, "--model", "rgat", "--epochs", "1", "--hidden", "8",
                 "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epochs"] == 1


def test_fresh_epochs_of_a_url_dataset_need_one_worker(prepared, s3, monkeypatch):
    from disktrain.errors import ConfigError
    from disktrain.train import TrainConfig, train

    url = f"{s3}/tiny"
    publish(prepared, url)
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "2")):
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=f"{url}: 50 epochs are more than .* --plan-reuse"):
        train(TrainConfig(dataset=url, epochs=50))
