#!/usr/bin/env bash
# Install genlora_pl for a cluster job into the current Python, keeping the torch it already has.
#
#   docker/install.sh [pip options] [source]        # source: default "." (the repository)
#
# A CUDA base image ships a torch built for its CUDA; a floating requirement such as torch>=2.6 could
# make pip replace it with another build. The torch, torchvision, torchaudio and triton that are
# installed become pip constraints, so the resolution keeps them or fails loudly. Only the package and
# its run-time dependencies are installed: no test tools, no offline corpora (those are extras).
set -euo pipefail

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
python -m pip list --format=freeze 2>/dev/null | grep -iE '^(torch|torchvision|torchaudio|triton)==' > "$constraints" || true
echo "constraints from the installed base:" >&2
cat "$constraints" >&2

args=()
source_dir="."
for arg in "$@"; do
  if [[ "$arg" != -* && -e "$arg" ]]; then source_dir="$arg"; else args+=("$arg"); fi
done
python -m pip install --no-cache-dir -c "$constraints" "${args[@]}" "$source_dir"
