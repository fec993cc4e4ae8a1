"""Checkpoint state round-trips without pickle; publishing writes manifest.json last;
resume picks the newest checkpoint that verifies, and pruning keeps it."""

from __future__ import annotations

import json
import random

import pytest
from kubetune.workers.manifest import MANIFEST_NAME, PICKLE_SUFFIXES
from kubetune.workers.objectstore import make_client
from kubetune.workers.train import state, storage
from trainer_support import BUCKET


def small_training_objects():
    import torch

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (s + 1))
    for _ in range(3):
        model(torch.randn(2, 4)).sum().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return model, optimizer, scheduler


def test_optimizer_scheduler_and_rng_round_trip(tmp_path):
    import torch

    model, optimizer, scheduler = small_training_objects()
    state.optimizer_to_files(optimizer, tmp_path)
    (tmp_path / state.SCHEDULER_JSON).write_text(json.dumps(scheduler.state_dict()))
    random.seed(5)
    torch.manual_seed(5)
    state.rng_to_files(tmp_path)
    expected = (random.random(), torch.rand(3))

    fresh_model, fresh_opt, fresh_sched = small_training_objects()
    fresh_opt.state.clear()
    state.optimizer_from_files(fresh_opt, tmp_path)
    fresh_sched.load_state_dict(json.loads((tmp_path / state.SCHEDULER_JSON).read_text()))
    random.seed(99)
    torch.manual_seed(99)
    state.rng_from_files(tmp_path)
    assert (random.random(), torch.rand(3))[0] == expected[0]
    state.rng_from_files(tmp_path)
    random.random()
    assert torch.equal(torch.rand(3), expected[1])
    for key, value in optimizer.state_dict()["state"][0].items():
        assert torch.equal(fresh_opt.state_dict()["state"][0][key], value), key
    assert fresh_sched.last_epoch == scheduler.last_epoch == 3
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(PICKLE_SUFFIXES)]


def write_files(directory, files: dict[str, bytes]):
    directory.mkdir(parents=True, exist_ok=True)
    for name, body in files.items():
        (directory / name).write_bytes(body)
    return directory


@pytest.mark.integration
def test_publish_writes_manifest_last_and_replaces_a_stale_one(tmp_path, s3):
    from kubetune.workers.manifest import Manifest

    client = make_client(s3.endpoint)
    dest = storage.JobLocation(f"s3://{BUCKET}/pub", "ns", "job").adapter
    client.put_object(Bucket=BUCKET, Key=f"{dest.key}/{MANIFEST_NAME}", Body=b"stale")
    local = write_files(tmp_path / "a", {"a.safetensors": b"x" * 10, "b.json": b"{}"})
    published = storage.publish_directory(client, local, dest, Manifest(kind="adapter"))
    keys = {o["Key"]: o for o in client.list_objects_v2(Bucket=BUCKET, Prefix=dest.key)["Contents"]}
    assert set(keys) == {f"{dest.key}/a.safetensors", f"{dest.key}/b.json", f"{dest.key}/manifest.json"}
    marker = keys[f"{dest.key}/manifest.json"]["LastModified"]
    assert all(o["LastModified"] <= marker for o in keys.values())
    fetched = storage.fetch_verified(client, dest, tmp_path / "back")
    assert fetched.kind == "adapter" and published.size_bytes == 12
    assert (tmp_path / "back" / "a.safetensors").read_bytes() == b"x" * 10


@pytest.mark.integration
def test_latest_checkpoint_skips_a_corrupt_or_incomplete_one(tmp_path, s3):
    from kubetune.workers.manifest import Manifest

    client = make_client(s3.endpoint)
    location = storage.JobLocation(f"s3://{BUCKET}/ckpt", "ns", "job")
    for step in (4, 8, 12):
        local = write_files(tmp_path / str(step), {"trainer_state.json": json.dumps({"step": step}).encode()})
        storage.publish_directory(client, local, location.checkpoint(step), Manifest(kind="checkpoint", step=step))
    # step 16 uploaded files but died before its manifest: invisible
    client.put_object(Bucket=BUCKET, Key=f"{location.checkpoint(16).key}/trainer_state.json", Body=b"{}")
    # step 12's file was overwritten after its manifest: fails sha256, so 8 is used
    client.put_object(Bucket=BUCKET, Key=f"{location.checkpoint(12).key}/trainer_state.json", Body=b"{\"step\": 99}")
    assert storage.checkpoint_steps(client, location) == [12, 8, 4]
    step, prefix = storage.latest_checkpoint(client, location, tmp_path / "resume")
    assert step == 8 and str(prefix).endswith("checkpoints/step-000000008")
    assert json.loads((tmp_path / "resume" / "trainer_state.json").read_text()) == {"step": 8}
    # retention keeps what resume verified (8) and what it cannot judge (12); 4 goes
    assert storage.prune_checkpoints(client, location, keep=1, known_good=[step]) == [4]
    assert storage.checkpoint_steps(client, location) == [12, 8]
