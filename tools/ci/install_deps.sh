#!/usr/bin/env bash
# Installs every Debian bookworm package moemesh needs to build, test and run.
# Idempotent and quick when everything is present: apt runs only if a
# package is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config
  libabsl-dev nlohmann-json3-dev libpcre2-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  bazel-bootstrap
  python3 python3-jinja2 python3-grpcio python3-protobuf python3-yaml
  libutf8proc-dev libsentencepiece-dev sentencepiece
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  clang-14 libclang-rt-14-dev
  prometheus-cpp-dev prometheus
  librocksdb-dev libxxhash-dev libcpp-httplib-dev libssl-dev openssl
  gnuplot-nox
)

# The Hugging Face tokenizers library (Node build) is the reference of the
# tokenizer tests; Node.js is on these machines, Debian's packages otherwise.
command -v node >/dev/null 2>&1 || PACKAGES+=(nodejs npm)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install_deps: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

hf=tools/hf_tokenizers
if [ ! -d "$hf/node_modules/@anush008/tokenizers" ]; then
  echo "install_deps: installing the Hugging Face tokenizers reference (npm)"
  npm install --prefix "$hf" --no-audit --no-fund --no-package-lock --loglevel=error
fi

# The Kubernetes API's schemas, for the offline check of the rendered
# manifests (tests/deploy_k8s_schema_test.mjs).
ks=tools/k8s_schemas
if [ ! -d "$ks/node_modules/kubernetes-models" ]; then
  echo "install_deps: installing the Kubernetes API schemas (npm)"
  npm install --prefix "$ks" --no-audit --no-fund --no-package-lock --loglevel=error
fi

# OpenAI's Node SDK: the real client of the HTTP API test (tests/openai_sdk_test.mjs).
oa=tools/openai_client
if [ ! -d "$oa/node_modules/openai" ]; then
  echo "install_deps: installing OpenAI's Node SDK (npm)"
  npm install --prefix "$oa" --no-audit --no-fund --no-package-lock --loglevel=error
fi
