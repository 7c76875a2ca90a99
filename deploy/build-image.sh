#!/usr/bin/env bash
# `make image`: builds the project's image (Dockerfile, unchanged) with the engine of this
# machine (deploy/engine.sh: docker, else podman).
#
#   IA_IMAGE      tag to build (default ia-continu:2.0.0, the tag compose.yaml uses)
#   PYTHON_IMAGE  base image (default: the Dockerfile's, python:3.11-slim-bookworm). When
#                 it is neither present nor pullable (no registry reachable), the
#                 stand-in built from Debian packages by deploy/base/build-base.sh is used.
#   PIP_INDEX_URL / UV_INDEX_URL / UV_DEFAULT_INDEX  passed on as build arguments when set
#                 in the environment (a PyPI mirror); nothing host-specific is written
#                 into the Dockerfile.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "${here}/.." && pwd)"
engine="${here}/engine.sh"
image="${IA_IMAGE:-ia-continu:2.0.0}"
official="${PYTHON_IMAGE:-python:3.11-slim-bookworm}"

"${engine}" --which >/dev/null  # a clear message when there is no engine at all

# Fully qualified for the pull: podman does not resolve short names without a registries.conf entry.
qualified="${official}"
if [[ "${qualified}" != */* ]]; then qualified="docker.io/library/${qualified}"; fi

args=()
if "${engine}" image inspect "${official}" >/dev/null 2>&1 \
  || "${engine}" image inspect "${qualified}" >/dev/null 2>&1 \
  || timeout 120 "${engine}" pull -q "${qualified}" >/dev/null 2>&1; then
  base="${qualified}"
else
  echo "${qualified} cannot be pulled here: using the stand-in base built from Debian packages"
  "${here}/base/build-base.sh"
  base="${IA_BASE_IMAGE:-localhost/ia-continu-base:3.11-bookworm}"
fi
args+=(--build-arg "PYTHON_IMAGE=${base}")
if [[ "$("${engine}" --which)" == podman ]]; then
  # podman's default (OCI) image format has no HEALTHCHECK: keep Docker's format.
  args+=(--format docker)
fi
for var in PIP_INDEX_URL UV_INDEX_URL UV_DEFAULT_INDEX; do
  if [[ -n "${!var:-}" ]]; then args+=(--build-arg "${var}=${!var}"); fi
done

echo "building ${image} from ${base} with $("${engine}" --which)"
start=$(date +%s)
# Host network for the RUN steps: no bridge/NAT setup is needed (nor possible everywhere).
"${engine}" build --network host -t "${image}" "${args[@]}" -f "${repo}/Dockerfile" "${repo}"
echo "built ${image} in $(($(date +%s) - start)) s"
"${engine}" image inspect --format '{{.Id}} size={{.Size}} bytes' "${image}"
