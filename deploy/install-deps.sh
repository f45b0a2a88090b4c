#!/usr/bin/env bash
# Installs the Debian packages clipfleet needs, only those missing, so that
# `make deps` is idempotent and cheap on a machine that already has them.
# Runs apt-get as root, or through sudo; says what to do when neither works.
set -euo pipefail

packages=(
  python3-torch libopenblas0-pthread            # worker math (openblas: 54 vs 3 GFLOP/s)
  python3-grpcio python3-protobuf               # worker <-> orchestrator
  python3-numpy python3-pil python3-matplotlib  # data decoding, report plots
  python3-pytest                                # worker tests
  protobuf-compiler protobuf-compiler-grpc      # make gen
  openssl                                       # clipfleet certs (the fleet CA)
  nats-server openssh-server prometheus iproute2 openssh-client procps  # real servers for tests
  slurm-wlm munge util-linux                    # the Slurm launcher and its tests (slurmctld, slurmd, srun; nsenter)
  chromium                                      # the dashboard's browser tests (puppeteer-core drives it; no browser download)
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all Debian packages present"
  exit 0
fi

echo "deps: installing ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "deps: these Debian packages are missing: ${missing[*]}" >&2
  echo "deps: installing them needs root; run 'sudo make deps' or install them with apt-get yourself" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
