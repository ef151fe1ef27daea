#!/usr/bin/env bash
# The main job end to end on the local farm (run by `make demo` after `make farm-up`):
# a smoke build on every daemon and platform, then examples/ submitted to melange-server
# as one DAG build (libgreet before greet-app, which installs it), followed to the end;
# then hello for aarch64, routed to the aarch64 backend. Prints where the repository
# and the logs are.
set -euo pipefail
cd "$(dirname "$0")/.."
. .farm/env
export MELANGE_SERVER
M2=.venv/bin/melange2

.venv/bin/python -m melange2.farm smoke

echo
echo "== submitting examples/ (hello, libgreet, greet-app) to $MELANGE_SERVER"
(cd examples && ../$M2 remote submit hello/hello.yaml libgreet/libgreet.yaml \
   greet-app/greet-app.yaml --mode dag --test --wait --poll-interval 0.5)
echo
echo "== hello for aarch64"
(cd examples && ../$M2 remote submit hello/hello.yaml --arch aarch64 --wait --poll-interval 0.5)

out=.farm/server/output
echo
echo "the signed APK repository (also served at $MELANGE_SERVER/repo/):"
ls -l "$out"/repo/x86_64 "$out"/repo/aarch64 "$out"/repo/keys
echo "build logs: $out/<build-id>-<package>/logs/build.log"
echo "the farm keeps running; stop it with: make farm-down"
