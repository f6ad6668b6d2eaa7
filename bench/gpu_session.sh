#!/usr/bin/env bash
# Every GPU check of the project in one run, for a lent GPU machine (bench/RESULTS.md records
# what it printed). From the repository root:
#
#     bash bench/gpu_session.sh          # logs under $OUT (the device tool) or /tmp/gpu_out
#
# Needs a CUDA jax with flax/optax/einops/orbax (the device image has them). Wheels for what
# the image lacks (jax-triton, ml_collections) are installed from .whl/ when present, since
# that machine has no network. Each phase has its own time limit so one hang cannot eat
# the lease; phases run most-important first.
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || echo "wheel install failed"
fi
# The kernels/ folder is the package unigen_kernels (pyproject's package-dir mapping) without an install.
mkdir -p /tmp/pkgs && ln -sfn "$PWD/kernels" /tmp/pkgs/unigen_kernels
export PYTHONPATH=/tmp/site:/tmp/pkgs:$PWD

phase() {  # phase NAME SECONDS CMD...: run with a limit, log to $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  echo; echo "######## $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  echo "######## $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0))s"
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
python3 -c "import jax, flax, optax, einops, triton; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'triton', triton.__version__, jax.devices())"
python3 -c "import jax_triton; print('jax_triton', jax_triton.__version__)" 2>&1 | tail -1

# Phases by name (default: all, in this order): bash bench/gpu_session.sh kernel_check attention_16k
run_phase() {
  case $1 in
    kernel_check) phase kernel_check 240 python3 bench/gpu_kernel_check.py ;;
    attention) phase attention 200 python3 bench/attention.py --section gpu --runs 5 \
      --lengths 4096 16384 32768 --sparsities 0 0.5 0.9 0.95 ;;
    attention_16k) phase attention_16k 100 python3 bench/attention.py --section gpu --runs 5 \
      --lengths 16384 --sparsities 0.5 0.9 0.95 ;;
    dit_xl2) phase dit_xl2_f32 75 python3 bench/scaling.py --real --per-device-batch 32 --steps 10
             phase dit_xl2_bf16 75 python3 bench/scaling.py --real --per-device-batch 32 --steps 10 --dtype bfloat16 ;;
    gpu_tests) phase gpu_tests 90 python3 -m pytest -q -p no:cacheprovider tests/test_block_sparse.py \
      tests/test_linear_attention.py tests/test_nn.py -k "on_gpu or jvp or platform" ;;
    *) echo "unknown phase $1"; exit 2 ;;
  esac
}
for name in "${@:-kernel_check attention dit_xl2 gpu_tests}"; do
  for n in $name; do run_phase "$n"; done
done
