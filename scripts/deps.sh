#!/usr/bin/env bash
# Installs what building and testing tracegate needs on a fresh Debian machine, skipping
# everything already present (idempotent and fast when nothing is missing). Needs root for apt.
set -euo pipefail

# Build prerequisites: the Rust toolchain, a C compiler and make (zstd-sys and librdkafka, via
# rdkafka-sys, build C from source; librdkafka runs its own ./configure + make, and its OpenSSL
# is built from source too, whose Configure is Perl: Debian's build-essential brings it, a bare
# gcc does not). No protoc, cmake or libclang needed.
need_apt=()
command -v cc >/dev/null || need_apt+=(gcc)
command -v make >/dev/null || need_apt+=(make)
perl -MIPC::Cmd -MFindBin -e1 2>/dev/null || need_apt+=(perl)
# openssl s_client drives the TLS handshake tests (gateway/tests/tls_proxy.rs); libFuzzer (the
# PROXY parser fuzz target, scripts/fuzz.sh) is C++.
command -v openssl >/dev/null || need_apt+=(openssl)
command -v c++ >/dev/null || need_apt+=(g++)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
fi
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy

# PostgreSQL server binaries for the postgres key store tests (gateway/tests/auth_postgres.rs
# starts throwaway clusters with scripts/pg.sh; they fail, never skip, without them).
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi

# Python services the integration tests start themselves, each in a venv in the CI cache
# (${TRACEGATE_CI_CACHE:-$HOME/.cache/tracegate-ci}) so a rerun only checks a stamp file:
# - chdb (a current ClickHouse engine, in-process) behind deploy/testing/chdb_front.py, for the
#   ClickHouse tests;
# - moto[server] (S3 + KMS on one loopback port), for the archive tests.
if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
fi
bash "$(dirname "$0")/chdb-venv.sh" >/dev/null
bash "$(dirname "$0")/moto.sh" install
# The archive's GCS and Azure tests: gcp-storage-emulator (PyPI) and Azurite (npm, needs Node);
# the Node SDK tests (npm).
if ! command -v npm >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
bash "$(dirname "$0")/cloud-emulators.sh" install
# The Node OpenTelemetry SDK, a real client for gateway/tests/node_sdk.rs.
bash "$(dirname "$0")/node-otel.sh" install
