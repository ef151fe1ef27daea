#!/usr/bin/env bash
# Builds buildkitd and buildctl from the BuildKit module pinned in tools/buildkit/go.mod
# into .tools/bin. Cached: rebuilt only when tools/buildkit/go.sum changes.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin="$here/.tools/bin"
stamp="$bin/.buildkit.stamp"
want=$(sha256sum "$here/tools/buildkit/go.mod" "$here/tools/buildkit/go.sum" | sha256sum | cut -d' ' -f1)
if [ -x "$bin/buildkitd" ] && [ -x "$bin/buildctl" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
mkdir -p "$bin"
echo "setup: building buildkitd and buildctl ($(grep 'moby/buildkit ' "$here/tools/buildkit/go.mod" | tr -s ' \t' ' ')) ..."
cd "$here/tools/buildkit"
version=$(go list -m -f '{{.Version}}' github.com/moby/buildkit)
pkg=github.com/moby/buildkit/version
CGO_ENABLED=0 go build -trimpath -o "$bin/" \
  -ldflags "-X $pkg.Version=$version -X $pkg.Revision=$version -X $pkg.Package=github.com/moby/buildkit" \
  github.com/moby/buildkit/cmd/buildkitd github.com/moby/buildkit/cmd/buildctl
echo "$want" > "$stamp"
