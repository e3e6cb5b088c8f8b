#!/usr/bin/env bash
# The README's main job (`make run`). The sweep harness has not landed yet, so this
# runs the part of pipenem that exists and says so.
set -eu
cd "$(dirname "$0")/.."
echo "# pipenem: the default sweep (bench/) has not landed yet; showing the commands that exist."
./pipenem --help
