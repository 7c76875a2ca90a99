#!/usr/bin/env bash
# A stand-in for the official python:3.11-slim-bookworm image, built from Debian packages
# only, for machines that reach Debian's mirror and PyPI but no container registry.
# Used by `make image` only when the official base cannot be pulled; the Dockerfile is
# unchanged (its PYTHON_IMAGE build argument points at this image instead).
#
#   deploy/base/build-base.sh            builds localhost/ia-continu-base:3.11-bookworm
#                                        (skipped when that image already exists)
#   IA_BASE_REBUILD=1 deploy/base/build-base.sh   rebuilds it
#
# Needs root and debootstrap. Mirror: IA_DEBIAN_MIRROR, else the first deb.debian.org-like
# URI of this machine's apt sources, else http://deb.debian.org/debian.
# What it reproduces of the official image: Python 3.11 at /usr/local/bin/python3.11
# (the virtual environment built in the Dockerfile points there), pip, and the tools the
# Dockerfile's RUN steps use (groupadd/useradd). What it adds: this machine's CA bundle,
# with SSL_CERT_FILE set, because uv (rustls) trusts only the bundle it is pointed at and
# PyPI may be reached through a TLS-inspecting gateway whose CA only the host knows.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
engine="${here}/../engine.sh"
image="${IA_BASE_IMAGE:-localhost/ia-continu-base:3.11-bookworm}"
suite=bookworm

if [[ "${IA_BASE_REBUILD:-0}" != 1 ]] && "${engine}" image inspect "${image}" >/dev/null 2>&1; then
  echo "base image ${image} exists (IA_BASE_REBUILD=1 rebuilds it)"
  exit 0
fi

find_mirror() {
  if [[ -n "${IA_DEBIAN_MIRROR:-}" ]]; then
    echo "${IA_DEBIAN_MIRROR}"
    return
  fi
  # deb822 (URIs: ...) and one-line (deb URI suite ...) sources; the main archive only.
  local uri
  uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | grep -v '^\s*#' \
    | grep -oE '(https?://[^ ]+/debian)/?( |$)' \
    | head -n1 | tr -d ' ' || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

command -v debootstrap >/dev/null 2>&1 || { echo "debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
mirror="$(find_mirror)"
root="$(mktemp -d "${TMPDIR:-/var/tmp}/ia-continu-base.XXXXXX")"
trap 'rm -rf "${root}"' EXIT

echo "debootstrap ${suite} from ${mirror} into ${root}"
debootstrap --variant=minbase \
  --include=python3.11,python3-pip,python3-venv,ca-certificates \
  "${suite}" "${root}" "${mirror}" >"${root}.log" 2>&1 \
  || { tail -n 30 "${root}.log" >&2; rm -f "${root}.log"; exit 1; }
rm -f "${root}.log"

# The official image's layout: python3.11/python3/python/pip in /usr/local/bin.
for name in python3.11 python3 python; do ln -sf /usr/bin/python3.11 "${root}/usr/local/bin/${name}"; done
ln -sf /usr/bin/pip3 "${root}/usr/local/bin/pip"
# pip may install into the system interpreter (as in the official image, where Python is
# not Debian's): the Dockerfile's `pip install uv` needs it.
rm -f "${root}"/usr/lib/python3*/EXTERNALLY-MANAGED
# This machine's CA bundle (PyPI may be behind a TLS-inspecting gateway).
ca_bundle="${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}"
if [[ -f "${ca_bundle}" ]]; then cp "${ca_bundle}" "${root}/etc/ssl/certs/ca-certificates.crt"; fi
# What an image does not need: package lists, docs, man pages, locales, apt caches.
rm -rf "${root}"/var/lib/apt/lists/* "${root}"/var/cache/apt/*.bin "${root}"/var/cache/apt/archives/*.deb \
  "${root}"/usr/share/doc/* "${root}"/usr/share/man/* "${root}"/usr/share/info/* "${root}"/usr/share/locale/*

echo "importing ${image}"
tar -C "${root}" -c . | "${engine}" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'CMD ["python3"]' \
  - "${image}" >/dev/null
"${engine}" image inspect --format '{{.Id}} {{.Size}}' "${image}"
