"""Remove everything in a benchmark project, then the project (by name, only ours)."""

import json
import subprocess
import sys

cli, project = sys.argv[1:3]
assert project.startswith("boshcpi-bench-"), project


def q(path):
    out = subprocess.run([cli, "query", path], capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else []


for inst in q(f"/1.0/instances?project={project}&recursion=1"):
    subprocess.run([cli, "--project", project, "delete", "--force", inst["name"]], capture_output=True)
for img in q(f"/1.0/images?project={project}&recursion=1"):
    subprocess.run([cli, "--project", project, "image", "delete", img["fingerprint"]], capture_output=True)
for vol in q(f"/1.0/storage-pools/boshcpi-btrfs/volumes/custom?project={project}&recursion=1"):
    subprocess.run(
        [cli, "--project", project, "storage", "volume", "delete", "boshcpi-btrfs", vol["name"]], capture_output=True
    )
subprocess.run([cli, "project", "delete", project], capture_output=True)
