#!/usr/bin/env bash
# Builds the third-party Go tools the farm and its tests run, each from the module pinned
# in tools/<name>/go.mod, into .tools/bin:
#   buildkit  buildkitd and buildctl (the farm's daemons)
#   fakegcs   fake-gcs-server (the GCS emulator the storage tests run against)
#   apko      apko (an independent checker: installs packages from the farm's repository)
#   melange   upstream melange v0.34.0 (the differential suite's oracle; its pipelines)
# Cached: a tool is rebuilt only when its go.mod/go.sum change.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin="$here/.tools/bin"
mkdir -p "$bin"

# build NAME BINARIES... -- GO_BUILD_ARGS...
build() {
  local name=$1; shift
  local binaries=()
  while [ "$1" != "--" ]; do binaries+=("$1"); shift; done
  shift
  local dir="$here/tools/$name" stamp="$bin/.$name.stamp" want
  want=$(cat "$dir/go.mod" "$dir/go.sum" | sha256sum | cut -d' ' -f1)  # contents only: not the checkout's path
  local fresh=1
  for b in "${binaries[@]}"; do [ -x "$bin/$b" ] || fresh=0; done
  if [ "$fresh" = 1 ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  echo "setup: building ${binaries[*]} ($(sed -n 's/^require \(.*\)$/\1/p' "$dir/go.mod" | head -1)) ..."
  (cd "$dir" && CGO_ENABLED=0 go build -trimpath -o "$bin/" "$@")
  echo "$want" > "$stamp"
}

bk_version=$(cd "$here/tools/buildkit" && go list -m -f '{{.Version}}' github.com/moby/buildkit)
bk_pkg=github.com/moby/buildkit/version
build buildkit buildkitd buildctl -- \
  -ldflags "-X $bk_pkg.Version=$bk_version -X $bk_pkg.Revision=$bk_version -X $bk_pkg.Package=github.com/moby/buildkit" \
  github.com/moby/buildkit/cmd/buildkitd github.com/moby/buildkit/cmd/buildctl
build fakegcs fake-gcs-server -- github.com/fsouza/fake-gcs-server
apko_version=$(cd "$here/tools/apko" && go list -m -f '{{.Version}}' chainguard.dev/apko)
build apko apko -- \
  -ldflags "-X sigs.k8s.io/release-utils/version.gitVersion=$apko_version" chainguard.dev/apko
melange_version=$(cd "$here/tools/melange" && go list -m -f '{{.Version}}' chainguard.dev/melange)
build melange melange -- \
  -ldflags "-X sigs.k8s.io/release-utils/version.gitVersion=$melange_version" chainguard.dev/melange
