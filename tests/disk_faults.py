"""The output disk filling up, then turning read-only, then coming back: run as a script inside its
own user and mount namespace (`unshare --user --map-root-user --mount`), where it may mount a small
tmpfs as the output location without any privilege on the host. tests/test_faults.py runs it and
checks what it records (a JSON file on the host).

    python tests/disk_faults.py INPUT MOUNTPOINT SIZE_MB COPY_TO RESULT_JSON
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def ingest(inp: str, out: Path) -> dict:
    args = ["ingest", "-c", "pipelines/ingest.yaml", "-i", inp, "-o", str(out), "--set", "input.samples_per_shard=3", "--set", "runtime.progress=false", "--set", "runtime.max_in_flight=2"]
    proc = subprocess.run([sys.executable, str(REPO / "cli.py"), *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    return {"rc": proc.returncode, "stderr": proc.stderr[-4000:], "stdout": proc.stdout[-2000:]}


def committed_files(out: Path) -> dict[str, str]:
    """sha256 of every committed unit's stats file and of every file it names."""
    digests = {}
    for stats in sorted(out.glob("stats/part-*.json")):
        digests[str(stats.relative_to(out))] = hashlib.sha256(stats.read_bytes()).hexdigest()
        for o in json.loads(stats.read_text())["outputs"]:
            for key in ("tar", "parquet"):
                if o.get(key):
                    digests[o[key]] = hashlib.sha256((out / o[key]).read_bytes()).hexdigest()
        rejects = json.loads(stats.read_text()).get("rejects_file")
        if rejects and (out / rejects).exists():
            digests[rejects] = hashlib.sha256((out / rejects).read_bytes()).hexdigest()
    return digests


def validate(out: Path) -> dict:
    sys.path.insert(0, str(REPO))
    from weaverdata.io.validate import validate_output

    r = validate_output(str(out))
    return {"ok": r.ok, "errors": r.errors}


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def main(inp: str, mnt: str, size_mb: str, copy_to: str, result: str) -> None:
    point = Path(mnt)
    point.mkdir(parents=True, exist_ok=True)
    mount("-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", mnt)
    out = point / "out"
    steps: dict = {}
    steps["full"] = ingest(inp, out)
    steps["full"]["committed"] = committed_files(out)
    steps["full"]["validate"] = validate(out)
    steps["full"]["planned"] = len(json.loads((out / "run.json").read_text())["units"])
    mount("-o", "remount,ro", mnt)
    steps["read_only"] = ingest(inp, out)
    steps["read_only"]["committed"] = committed_files(out)
    mount("-o", "remount,rw,size=512m", mnt)
    steps["room_again"] = ingest(inp, out)
    steps["room_again"]["validate"] = validate(out)
    shutil.copytree(out, copy_to)
    Path(result).write_text(json.dumps(steps, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:6])
