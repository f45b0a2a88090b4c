#!/usr/bin/env bash
# What `make gpu-check` needs beyond the tracked tree, for a GPU machine that has CUDA torch but
# neither node nor this build (the lent device machines: no network, 64 MiB carried at most).
#
#   bash bench/gpu-check-pack.sh pack      # here, after make build: writes tmp/gpu-check-pack/ (about 35 MiB)
#   bash bench/gpu-check-pack.sh unpack    # there, in the repository root: node into tmp/gpu-check-pack/bin,
#                                          # then dist/, node_modules/ (production only) and the generated code
# then, there:  PATH="$PWD/tmp/gpu-check-pack/bin:$PATH" make gpu-check
# (docs/benchmarks.md, "GPU check"). tmp/ is ignored by git.
set -euo pipefail
cd "$(dirname "$0")/.."
PACK=tmp/gpu-check-pack

case "${1:-}" in
  pack)
    for p in dist/orchestrator/src/main.js orchestrator/src/gen worker-runtime/clipfleet_worker/gen node_modules; do
      [[ -e $p ]] || { echo "gpu-check-pack: $p is missing: run make build first" >&2; exit 2; }
    done
    rm -rf "$PACK" && mkdir -p "$PACK"
    stage=$(mktemp -d)
    trap 'rm -rf "$stage"' EXIT
    cp package.json package-lock.json "$stage/"
    cp -a node_modules "$stage/"
    (cd "$stage" && npm prune --omit=dev --offline --no-audit --no-fund >/dev/null)
    tar -C "$stage" -cJf "$PACK/node_modules.tar.xz" node_modules
    tar -cJf "$PACK/build.tar.xz" dist orchestrator/src/gen worker-runtime/clipfleet_worker/gen
    xz -T0 -6 -c "$(command -v node)" > "$PACK/node.xz"
    du -sh "$PACK"
    ;;
  unpack)
    [[ -f $PACK/node.xz ]] || { echo "gpu-check-pack: $PACK/node.xz is missing: carry $PACK (made by: bench/gpu-check-pack.sh pack)" >&2; exit 2; }
    mkdir -p "$PACK/bin"
    xz -dc "$PACK/node.xz" > "$PACK/bin/node" && chmod +x "$PACK/bin/node"
    rm -rf node_modules dist orchestrator/src/gen worker-runtime/clipfleet_worker/gen
    tar -xJf "$PACK/node_modules.tar.xz"
    tar -xJf "$PACK/build.tar.xz"
    "$PACK/bin/node" --version
    ;;
  *)
    echo "usage: bash bench/gpu-check-pack.sh pack|unpack" >&2
    exit 2
    ;;
esac
