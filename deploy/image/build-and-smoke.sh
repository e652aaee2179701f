#!/usr/bin/env bash
# Builds the linehost container image on a machine without an image registry and smoke-tests it:
#   1. a Debian bookworm minbase root filesystem with python3 (debootstrap), imported into podman
#      as the local base image (cached: podman's storage, then a tarball in $CACHE);
#   2. the repository's Dockerfile with --build-arg BASE=<that image> (podman build);
#   3. inside the image (buildah run --isolation chroot): linehost --version, linehost demo on
#      two simulated jigs, then linehost doctor on the demo's config with the jigs up.
# Any failing step fails the script. docs/deployment.md explains why each choice is needed here.
set -euo pipefail
cd "$(dirname "$0")/../.."

CACHE=${LINEHOST_IMAGE_CACHE:-/var/cache/linehost-image}
SUITE=bookworm  # python3 is 3.11 there, what linehost needs
BASE_PACKAGES=python3,python3-venv,ca-certificates
IMAGE=${LINEHOST_IMAGE:-localhost/linehost:smoke}
BROKER=${LINEHOST_SMOKE_MQTT:-mqtt://127.0.0.1:1883}

say() { printf '== image: %s\n' "$*"; }
started=$SECONDS

missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v buildah >/dev/null 2>&1 || missing+=(buildah)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  say "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The base is this machine's: it trusts what this machine trusts (an egress proxy's CA among
# them), so pip inside the build reaches PyPI. The key changes when either changes.
local_cas=$(cat /usr/local/share/ca-certificates/*.crt 2>/dev/null || true)
key=$(printf '%s\n%s\n%s\n' "$SUITE" "$BASE_PACKAGES" "$local_cas" | sha256sum | cut -c1-12)
BASE_IMAGE=localhost/linehost-base:$SUITE-$key
tarball=$CACHE/rootfs-$SUITE-$key.tar

debian_mirror() {
  # The mirror apt uses here; no host name is written into the project.
  if [ -n "${LINEHOST_DEBIAN_MIRROR:-}" ]; then echo "$LINEHOST_DEBIAN_MIRROR"; return; fi
  local uri
  uri=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources \
        2>/dev/null || true)
  [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' \
                         /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$uri" ] || { echo "no Debian mirror found in apt's sources" >&2; return 1; }
  echo "$uri"
}

make_rootfs() {
  local root
  root=$(mktemp -d /var/tmp/linehost-rootfs.XXXXXX)
  say "debootstrap --variant=minbase $SUITE (+$BASE_PACKAGES)"
  debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$root" "$(debian_mirror)" \
    >"$CACHE/debootstrap.log" 2>&1 || { tail -n 20 "$CACHE/debootstrap.log"; return 1; }
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null
  fi
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$root/etc/pip.conf"
  chroot "$root" apt-get clean
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/locale/*
  tar --numeric-owner -C "$root" -cf "$tarball.part" .
  mv "$tarball.part" "$tarball"
  rm -rf "$root"
}

mkdir -p "$CACHE"
if podman image exists "$BASE_IMAGE"; then
  say "base $BASE_IMAGE (cached in podman's storage)"
else
  if [ -f "$tarball" ]; then
    say "base from the cached root filesystem $tarball"
  else
    make_rootfs
  fi
  podman import --change 'CMD ["/bin/bash"]' "$tarball" "$BASE_IMAGE" >/dev/null
fi
say "base ready after $((SECONDS - started)) s"

say "podman build --build-arg BASE=$BASE_IMAGE -t $IMAGE"
podman build --quiet --format docker --isolation chroot --network host --build-arg "BASE=$BASE_IMAGE" \
  -t "$IMAGE" -f Dockerfile . >/dev/null
say "image built after $((SECONDS - started)) s"
# Earlier builds' untagged layers: keep a few days' worth as the layer cache, drop the rest.
podman image prune -f --filter until=72h >/dev/null 2>&1 || true

# `podman run` is refused here (setrlimit, see docs/deployment.md); buildah runs processes in
# the image's root filesystem with chroot isolation, on the host's network (the broker).
ctr=$(buildah from --quiet --pull-never "$IMAGE")
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
in_image() { buildah run --isolation chroot --network host "$ctr" -- "$@"; }

say "smoke: linehost --version"
in_image linehost --version
say "smoke: linehost demo --no-hold --jigs 2 --devices 4 (MQTT $BROKER)"
in_image linehost demo --no-hold --jigs 2 --devices 4 --dir /tmp/demo --mqtt "$BROKER" \
  --dashboard 127.0.0.1:0 | tail -n 8
say "smoke: linehost doctor on the demo's config, simulated jigs up"
in_image sh -ec '
  linehost sim --jigs 2 --dir /tmp/demo/jigs >/tmp/sim.log 2>&1 &
  sim=$!
  for _ in $(seq 1 100); do [ -e /tmp/demo/jigs/j2 ] && break; sleep 0.1; done
  rc=0
  linehost doctor --config /tmp/demo/line.toml || rc=$?
  kill "$sim"
  exit "$rc"'
say "smoke passed in $((SECONDS - started)) s"
