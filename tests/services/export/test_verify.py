"""`kpdd snapshot verify`: exit 0 when every file matches the manifest, 1 naming each file that
was modified, removed or added, or a manifest that was edited."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from services.export.manifest import verify_snapshot
from tests.conftest import CliResult


@pytest.fixture
def snapshot(
    sqlite_kpdd: Callable[..., CliResult], make_rationales: Callable[..., None], tmp_path: Path
) -> Path:
    make_rationales(sqlite_kpdd, 2, wrong=False)
    out = tmp_path / "original"
    assert sqlite_kpdd("export", "--out", out, "--val-fraction", "0.5").code == 0
    return out


def _copy(snapshot: Path, name: str) -> Path:
    return Path(shutil.copytree(snapshot, snapshot.parent / name))


def test_an_intact_snapshot_verifies_wherever_it_is(
    sqlite_kpdd: Callable[..., CliResult], snapshot: Path
) -> None:
    moved = _copy(snapshot, "moved")  # nothing in a snapshot depends on its path
    for root in (snapshot, moved):
        result = sqlite_kpdd("snapshot", "verify", root, "--json")
        assert result.code == 0, result.err
        report = json.loads(result.out)
        assert report["ok"] is True and report["problems"] == [] and report["files_checked"] == 5


def test_tampering_is_reported_by_file(sqlite_kpdd: Callable[..., CliResult], snapshot: Path) -> None:
    flipped = _copy(snapshot, "flipped")
    data = flipped / "data/rationales/train.parquet"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit, mid-file
    data.write_bytes(bytes(raw))

    removed = _copy(snapshot, "removed")
    (removed / "data/end_to_end/validation.parquet").unlink()

    added = _copy(snapshot, "added")
    (added / "data/rationales/extra.parquet").write_bytes(b"PAR1")

    card = _copy(snapshot, "card")
    (card / "README.md").write_text((card / "README.md").read_text() + "\nedited\n")

    cases = {
        flipped: "data/rationales/train.parquet: sha256",
        removed: "data/end_to_end/validation.parquet: missing",
        added: "data/rationales/extra.parquet: not in the manifest",
        card: "README.md: sha256",
    }
    for root, message in cases.items():
        result = sqlite_kpdd("snapshot", "verify", root)
        assert result.code == 1, root
        assert message in result.err, result.err
        assert "does not match its manifest (1 problem(s))" in result.err


def test_an_edited_manifest_is_reported(snapshot: Path) -> None:
    # Re-pointing the manifest at a modified file changes the snapshot id's inputs.
    repointed = _copy(snapshot, "repointed")
    data = repointed / "data/rationales/train.parquet"
    data.write_bytes(data.read_bytes() + b"\0")
    manifest = json.loads((repointed / "manifest.json").read_text())
    for entry in manifest["files"]:
        if entry["path"] == "data/rationales/train.parquet":
            entry["sha256"] = hashlib.sha256(data.read_bytes()).hexdigest()
    (repointed / "manifest.json").write_text(json.dumps(manifest))
    report = verify_snapshot(repointed)
    assert report.problems == [
        "manifest.json: the snapshot id does not match its spec and file hashes (edited)"
    ]

    # Editing a count leaves the files alone but breaks the manifest digest.
    recounted = _copy(snapshot, "recounted")
    manifest = json.loads((recounted / "manifest.json").read_text())
    manifest["counts"]["rows"] += 1
    (recounted / "manifest.json").write_text(json.dumps(manifest))
    assert verify_snapshot(recounted).problems == [
        "manifest.json: its content does not match its manifest_digest (edited)"
    ]

    gone = _copy(snapshot, "gone")
    (gone / "manifest.json").unlink()
    assert verify_snapshot(gone).problems == ["manifest.json: missing"]

    garbage = _copy(snapshot, "garbage")
    (garbage / "manifest.json").write_text("{not json")
    assert verify_snapshot(garbage).problems[0].startswith("manifest.json: not a kpdd snapshot manifest")

    escape = _copy(snapshot, "escape")
    manifest = json.loads((escape / "manifest.json").read_text())
    manifest["files"][0]["path"] = "../original/manifest.json"
    (escape / "manifest.json").write_text(json.dumps(manifest))
    assert "lists a path outside the snapshot" in verify_snapshot(escape).problems[0]
