#!/usr/bin/env bash
# The main job end to end on the local farm (run by `make demo` after `make farm-up`):
# a smoke build on every daemon and platform, then examples/ submitted to melange-server
# as one DAG build (libgreet before greet-app, which installs it), followed to the end;
# then zlib, GNU hello and minizip compiled from their upstream tarballs with the
# toolchain repository, and GNU hello for aarch64 on the aarch64 backend. A second run
# reuses what the first built. Prints where the repository and the logs are.
set -euo pipefail
cd "$(dirname "$0")/.."
. .farm/env
export MELANGE_SERVER MELANGE_TOKEN
M2=.venv/bin/melange2

.venv/bin/python -m melange2.farm smoke

echo
echo "== submitting examples/ (hello, libgreet, greet-app) to $MELANGE_SERVER"
(cd examples && ../$M2 remote submit hello/hello.yaml libgreet/libgreet.yaml \
   greet-app/greet-app.yaml --mode dag --test --wait --poll-interval 0.5)
echo
echo "== real software from upstream tarballs (in the source cache): zlib, GNU hello, and"
echo "   minizip, whose environment installs the zlib-dev built just before it"
(cd examples && ../$M2 remote submit zlib/zlib.yaml gnu-hello/gnu-hello.yaml \
   minizip/minizip.yaml --mode dag --test --wait --poll-interval 1)
echo
echo "== GNU hello for aarch64 (compiled and tested under qemu on the aarch64 backend)"
(cd examples && ../$M2 remote submit gnu-hello/gnu-hello.yaml --arch aarch64 --test --wait \
   --poll-interval 2)

out=.farm/server/output
echo
echo "the signed APK repository (also served at $MELANGE_SERVER/repo/):"
ls -l "$out"/repo/x86_64 "$out"/repo/aarch64 "$out"/repo/keys
echo "build logs: $out/<build-id>-<package>/logs/build.log"
echo "the farm keeps running; stop it with: make farm-down"
