#!/usr/bin/env bash
# The main job end to end on the local farm (run by `make demo` after `make farm-up`):
# a smoke build on every daemon and platform, then the examples built with
# `melange2 build`: hello (with its test) for x86_64 and aarch64, libgreet, and
# greet-app, whose build installs libgreet from the output repository.
set -euo pipefail
cd "$(dirname "$0")/.."
. .farm/env
M2=.venv/bin/melange2
out=out/demo
key=out/demo-key/melange.rsa
mkdir -p "$(dirname "$key")"
[ -f "$key" ] || $M2 keygen "$key" >/dev/null

.venv/bin/python -m melange2.farm smoke

common=(--out-dir "$out" --signing-key "$key"
        --buildkit-addr "${BUILDKIT_ADDRS%% *}" --registry "$REGISTRY"
        --repository-append "$BOOTSTRAP_REPO" --keyring-append "$BOOTSTRAP_KEY"
        --repository-append "$out" --keyring-append "$key.pub")
for arch in x86_64 aarch64; do
  echo "== hello ($arch)"
  $M2 build examples/hello/hello.yaml --arch "$arch" --with-test "${common[@]}"
done
echo "== libgreet"
$M2 build examples/libgreet/libgreet.yaml "${common[@]}"
echo "== greet-app (installs libgreet from $out)"
$M2 build examples/greet-app/greet-app.yaml "${common[@]}"

echo
echo "packages and signed indexes:"
ls -l "$out"/x86_64 "$out"/aarch64
echo "logs: $out/logs/   public key: $key.pub"
echo "the farm keeps running; stop it with: make farm-down"
