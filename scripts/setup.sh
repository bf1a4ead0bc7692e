#!/usr/bin/env bash
# Installs the harness and its Python dependencies into ./.venv.
# With --system it also installs the Debian packages the tests run against (real peers:
# OpenSSH's sshd, the adb server, and the Fashion-MNIST files); that part needs root or sudo.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--system" ]]; then
  sudo=""
  [[ "$(id -u)" -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
    python3-venv openssh-server adb dataset-fashion-mnist >/dev/null
fi

[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# compat mode puts the checkout on sys.path; the default editable finder runs after it, so a
# `results/` output folder in the working directory would shadow the `results` package.
.venv/bin/python -m pip install -q -e '.[test]' --config-settings editable_mode=compat
# qkeras-v3's metadata requires the full `tensorflow` wheel, tensorflow-model-optimization
# (which only works with legacy Keras), ruff and an unrelated `pyparser`; next to
# tensorflow-cpu it needs none of them, so it is installed without its declared dependencies
# (the ones it really imports are in pyproject.toml).
.venv/bin/python -m pip install -q --no-deps 'qkeras-v3==1.2.1'
