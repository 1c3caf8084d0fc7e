#!/usr/bin/env bash
# Build the Docker image with podman and run it for real, offline: the check a cluster user would
# otherwise make after a queue wait.
#
#   bash docker/check_image.sh          # from anywhere inside a clone; needs podman (and mmdebstrap
#                                       # for the stand-in base, runc where crun refuses the host):
#                                       # apt-get install podman mmdebstrap runc
#
# 1. The base: $CHECK_IMAGE_BASE if given (e.g. the real pytorch/pytorch image, pulled), else a
#    stand-in made here and cached in podman's store: a Debian bookworm root file system from
#    mmdebstrap, imported, with the base's Python and torch release (docker/standin/Containerfile).
# 2. The image: docker/Dockerfile built from this clone with BASE_IMAGE set to that base.
# 3. Runs, all with --network=none, as the image's non-root user, with data/ and outputs/ volumes of
#    a fresh folder: --help; a class-folder image set written into the data volume; `fit` of the
#    shipped debug preset (named configs/debug.yaml, as the docs do) on it with a mounted config of
#    our own; `validate`, `test`, `predict` of that checkpoint; `export` of it to merged, PEFT and
#    adapter folders. Every file written must be on the host, owned by the invoking user where
#    podman maps the user (rootless), else by the image's uid 1000.
# 4. The torch inside the image must be the base's (install.sh must not have replaced it).
#
# Prints the image's size, the size the project's layers add and the build time. Stops at the first
# step that fails with one line that names it, the last line printed (the step's log is kept and its
# tail printed above).
#
# Environment: CHECK_IMAGE_BASE (a base image to use instead of the stand-in), CHECK_IMAGE_TAG (the
# image's tag, default localhost/genlora-pl:check), CHECK_IMAGE_FIT_ARGS (extra `fit` arguments),
# CHECK_IMAGE_KEEP=1 (keep the run folder), CHECK_IMAGE_EXTRAS (the Dockerfile's EXTRAS).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tag="${CHECK_IMAGE_TAG:-localhost/genlora-pl:check}"
standin="localhost/genlora-pl-standin:torch2.7.1"  # torch and torchvision: docker/standin/Containerfile
rootfs="localhost/genlora-pl-rootfs:bookworm"
work="$(mktemp -d "${TMPDIR:-/tmp}/genlora-pl-check.XXXXXX")"
logs="$work/logs"
mkdir -p "$logs" "$work/data" "$work/outputs" "$work/check"
step_name="start"

say() { printf 'check_image: %s\n' "$*"; }
fail() {
  say "logs and run folder kept in $work"
  say "FAILED at step '$step_name': $*"
  exit 1
}
# run_step NAME CMD...: the command's output goes to logs/NAME.log; on failure its tail is printed
# and the check ends with one line naming the step.
run_step() {
  step_name="$1"
  shift
  local log="$logs/$step_name.log" start=$SECONDS
  if ! "$@" >"$log" 2>&1; then
    tail -n 15 "$log" | sed 's/^/  | /'
    local last
    last="$(grep -v '^\s*$' "$log" | tail -n 1)"
    fail "exit status non-zero: ${last:-no output}"
  fi
  say "$step_name: ok ($((SECONDS - start)) s)"
}

command -v podman >/dev/null || { step_name="podman"; fail "podman is not installed; apt-get install podman mmdebstrap runc"; }

# --- podman's options on this host ------------------------------------------------------------------
# Hosts whose cgroups are mixed v1/v2 refuse crun ("cgroups in hybrid mode not supported"), and a
# root without CAP_SYS_RESOURCE cannot raise a container's limits; there runc with the host's own
# (lower) limits works. Probed once on a tiny image, used for every build and run below.
opts=()
probe_opts() {
  local image="$1" nofile nproc
  if podman run --rm --network=none "$image" true >"$logs/probe.log" 2>&1; then return 0; fi
  command -v runc >/dev/null || fail "podman cannot start a container here ($(tail -n 1 "$logs/probe.log")); apt-get install runc may help"
  nofile="$(ulimit -Hn)"
  nproc="$(ulimit -Hu)"
  [[ "$nofile" == unlimited ]] && nofile=1048576
  [[ "$nproc" == unlimited || "$nproc" -gt 32768 ]] && nproc=32768
  opts=(--runtime runc --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
  podman run "${opts[@]}" --rm --network=none "$image" true >>"$logs/probe.log" 2>&1 \
    || fail "podman cannot start a container here: $(tail -n 1 "$logs/probe.log")"
  say "podman: crun refused this host; using ${opts[*]}"
}

# --- 1. the base -----------------------------------------------------------------------------------
make_rootfs() {
  command -v mmdebstrap >/dev/null || fail "mmdebstrap is not installed; apt-get install mmdebstrap (or set CHECK_IMAGE_BASE)"
  local hooks=()
  # a CA the build machine's network needs (a TLS-inspecting proxy) is trusted inside as outside
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    # shellcheck disable=SC2016  # "$1" is mmdebstrap's, expanded by the hook's shell
    hooks=(--customize-hook='copy-in /usr/local/share/ca-certificates/. /usr/local/share/ca-certificates/'
      --customize-hook='chroot "$1" update-ca-certificates')
  fi
  mmdebstrap --variant=apt --include=python3,python3-venv,ca-certificates "${hooks[@]}" bookworm "$work/rootfs.tar"
  podman import "$work/rootfs.tar" "$rootfs"
  rm -f "$work/rootfs.tar"
}

if [[ -n "${CHECK_IMAGE_BASE:-}" ]]; then
  base="$CHECK_IMAGE_BASE"
  podman image exists "$base" || run_step pull-base podman pull "$base"
  probe_opts "$base"
else
  base="$standin"
  if podman image exists "$base"; then
    say "base: $base (cached)"
    probe_opts "$base"
  else
    podman image exists "$rootfs" || run_step rootfs make_rootfs
    probe_opts "$rootfs"
    run_step standin-base podman build "${opts[@]}" --network=host --build-arg "ROOTFS=$rootfs" -t "$base" \
      -f "$repo/docker/standin/Containerfile" "$repo/docker/standin"
  fi
fi

# --- 2. the image ----------------------------------------------------------------------------------
# Builds use the host's network (pip reaches PyPI as the host does; a rootless podman without
# /dev/net/tun has no other); every run of the image has none.
build_start=$SECONDS
previous="$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
extras=()
[[ -n "${CHECK_IMAGE_EXTRAS:-}" ]] && extras=(--build-arg "EXTRAS=$CHECK_IMAGE_EXTRAS")
run_step build podman build "${opts[@]}" --network=host --build-arg "BASE_IMAGE=$base" "${extras[@]}" -t "$tag" \
  -f "$repo/docker/Dockerfile" "$repo"
build_seconds=$((SECONDS - build_start))
# the image this tag named before, if the build replaced it: removed, so reruns do not pile up 1 GB each
if [[ -n "$previous" && "$previous" != "$(podman image inspect --format '{{.Id}}' "$tag")" ]]; then
  podman rmi "$previous" >/dev/null 2>&1 || true
fi
base_bytes="$(podman image inspect --format '{{.Size}}' "$base")"
image_bytes="$(podman image inspect --format '{{.Size}}' "$tag")"
gb() { awk -v b="$1" 'BEGIN { printf "%.2f GB", b / 1e9 }'; }

# --- 3. runs ---------------------------------------------------------------------------------------
# Rootless podman maps the invoking user onto the image's uid 1000, so what the image writes is the
# user's; a root podman writes as uid 1000, so the folders are handed to it.
if [[ "$(id -u)" == 0 ]]; then
  owner=1000
  chown -R 1000:1000 "$work/data" "$work/outputs"
  userns=()
else
  owner="$(id -u)"
  userns=("--userns=keep-id:uid=1000,gid=1000")
fi
# the config of our own: the debug preset's tiny ViT on the image set the check writes (no download)
cat >"$work/check/data.yaml" <<'YAML'
data:
  class_path: genlora_pl.data.ImageFolderData
  init_args: {root: data/shapes, batch_size: 16, image_size: 32}
YAML
run_image() {
  podman run "${opts[@]}" "${userns[@]}" --rm --network=none \
    -v "$work/data:/opt/genlora_pl/data" -v "$work/outputs:/opt/genlora_pl/outputs" \
    -v "$work/check:/opt/genlora_pl/check:ro" "$@"
}
expect() { # expect FILE TEXT: the step's log holds TEXT
  grep -qF -- "$2" "$1" || fail "its output lacks \"$2\" (log: $1)"
}

run_step help run_image "$tag" --help
expect "$logs/help.log" "usage: python -m genlora_pl"

torch_of() { # torch_of IMAGE: the version and the file of the torch it imports
  podman run "${opts[@]}" --rm --network=none --entrypoint python "$1" -c \
    'import torch; print(torch.__version__, torch.__file__)'
}
both_torches() { torch_of "$base" >"$work/torch_base.txt" && torch_of "$tag" >"$work/torch_image.txt"; }
run_step torch both_torches
cmp -s "$work/torch_base.txt" "$work/torch_image.txt" \
  || fail "the image's torch ($(cat "$work/torch_image.txt")) is not the base's ($(cat "$work/torch_base.txt"))"
say "torch inside the image is the base's: $(cat "$work/torch_image.txt")"

run_step data run_image --entrypoint python "$tag" -c '
import numpy as np
from pathlib import Path
from PIL import Image

rng = np.random.default_rng(0)
stripes = np.arange(32) // 4 % 2 == 0
for split, n in (("train", 48), ("val", 16), ("test", 16)):
    for label in ("horizontal", "vertical"):
        folder = Path("data/shapes") / split / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            x = rng.integers(0, 60, (32, 32), dtype=np.uint8)
            if label == "horizontal":
                x[stripes, :] += 160
            else:
                x[:, stripes] += 160
            Image.fromarray(x).convert("RGB").save(folder / f"{i}.png")
print("wrote", sum(1 for _ in Path("data/shapes").rglob("*.png")), "images")
'

read -r -a fit_args <<<"${CHECK_IMAGE_FIT_ARGS:-}"
config=(--config configs/debug.yaml --config check/data.yaml)  # the repository path the docs use
run_step fit run_image "$tag" fit "${config[@]}" "${fit_args[@]}"
ckpt="$(cd "$work/outputs" && find . -name last.ckpt | sort | tail -n 1)"
[[ -n "$ckpt" ]] || fail "no last.ckpt under the outputs volume"
ckpt="outputs/${ckpt#./}"
found_owner="$(stat -c %u "$work/$ckpt")"
[[ "$found_owner" == "$owner" ]] || fail "$ckpt on the host is owned by uid $found_owner, not $owner"
say "fit wrote $ckpt into the volume, owned by uid $owner"
# and it learned: two classes of stripes, which the debug preset's 6 steps separate (1.00 measured)
acc="$(awk '/best val\/acc /{ print $NF }' "$logs/fit.log" | tail -n 1)"
awk -v a="${acc:-0}" 'BEGIN { exit !(a >= 0.75) }' \
  || fail "the fit learned nothing: best val/acc ${acc:-missing} on two classes of stripes (>= 0.75 expected)"
say "fit: best val/acc $acc"

run_step validate run_image "$tag" validate "${config[@]}" --ckpt_path "$ckpt"
run_step test run_image "$tag" test "${config[@]}" --ckpt_path "$ckpt"
run_step predict run_image "$tag" predict "${config[@]}" --ckpt_path "$ckpt"
[[ -n "$(find "$work/outputs" -name predictions.jsonl)" ]] || fail "predict wrote no predictions.jsonl"
run_step export run_image "$tag" export --ckpt_path "$ckpt" --output_dir outputs/export
for format in merged peft adapter; do
  [[ -n "$(ls -A "$work/outputs/export/$format" 2>/dev/null)" ]] || fail "export wrote no $format folder"
done

step_name="report"
say "image $tag: $(gb "$image_bytes"); the project's layers add $(gb $((image_bytes - base_bytes))) to the base $base ($(gb "$base_bytes")); build $build_seconds s"
say "passed"
if [[ "${CHECK_IMAGE_KEEP:-0}" == 1 ]]; then say "run folder kept: $work"; else rm -rf "$work"; fi
