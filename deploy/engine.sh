#!/usr/bin/env bash
# The container engine of this machine, as one command: `deploy/engine.sh <args>` runs
# `docker <args>` when a Docker daemon answers, else `podman <args>` with the settings a
# container-in-a-VM machine without systemd needs:
#   --runtime runc          crun (podman's default) fails here on
#                           `setrlimit RLIMIT_NOFILE: Operation not permitted`
#   --storage-driver D      the driver of the existing store (/var/lib/containers/storage),
#                           else overlay when the kernel has it, else vfs (vfs copies every
#                           layer: several times slower and larger on disk)
#   BUILDAH_RUNTIME=runc    the same runtime for `podman build`'s RUN steps
#   --cgroup-manager cgroupfs  no systemd to manage cgroups
#   run/create: --ulimit nofile=H:H --ulimit nproc=P:P with H the shell's hard limit on open
#                           files and P = min(its hard limit on processes, 32768): without
#                           CAP_SYS_RESOURCE, runc cannot give a container more than podman
#                           itself has (podman's defaults are 1048576: `error setting
#                           rlimit type 7: operation not permitted`)
# IA_PODMAN_FLAGS replaces the global flags and IA_PODMAN_RUN_FLAGS the run/create ones
# (e.g. both "" where podman works with its defaults); IA_CONTAINER_ENGINE=docker|podman
# forces the choice.
# `deploy/engine.sh --which` prints the chosen engine (docker|podman) and exits 1 if none.
set -euo pipefail

choose_engine() {
  if [[ -n "${IA_CONTAINER_ENGINE:-}" ]]; then
    echo "${IA_CONTAINER_ENGINE}"
  elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    # A docker client without a reachable daemon (this machine has one) does not count.
    echo docker
  elif command -v podman >/dev/null 2>&1; then
    echo podman
  else
    return 1
  fi
}

if ! engine=$(choose_engine); then
  echo "no container engine: install Docker (with its daemon running) or podman" >&2
  exit 1
fi
if [[ "${1:-}" == "--which" ]]; then
  echo "${engine}"
  exit 0
fi
if [[ "${engine}" == podman ]]; then
  export BUILDAH_RUNTIME="${BUILDAH_RUNTIME:-runc}"
  store=/var/lib/containers/storage
  if [[ -d "${store}/vfs-images" ]]; then
    driver=vfs
  elif [[ -d "${store}/overlay-images" ]] || grep -qw overlay /proc/filesystems; then
    driver=overlay
  else
    driver=vfs
  fi
  # shellcheck disable=SC2206  # word splitting of the flags is intended
  flags=(${IA_PODMAN_FLAGS---runtime runc --storage-driver ${driver} --cgroup-manager cgroupfs})
  if [[ "${1:-}" == run || "${1:-}" == create ]]; then
    nofile=$(ulimit -Hn)
    nproc=$(ulimit -Hu)
    if [[ "${nproc}" == unlimited || "${nproc}" -gt 32768 ]]; then nproc=32768; fi
    # shellcheck disable=SC2206
    run_flags=(${IA_PODMAN_RUN_FLAGS---ulimit nofile=${nofile}:${nofile} --ulimit nproc=${nproc}:${nproc}})
    subcommand="$1"
    shift
    exec podman "${flags[@]}" "${subcommand}" "${run_flags[@]}" "$@"
  fi
  exec podman "${flags[@]}" "$@"
fi
exec "${engine}" "$@"
