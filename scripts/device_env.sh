# Source on the GPU machine (jax 0.11.2 preinstalled, no network): installs the carried cp312 wheels
# from .whl/ (spec/jax_stack.md §0.4) into /tmp/site and puts them first on PYTHONPATH.
#   source scripts/device_env.sh
SITE="${TMPDIR:-/tmp}/site"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
  || { echo "device_env: wheel install failed" >&2; return 1; }
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# Never use NVLink multicast on the shared hosts (device README).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
python3 -m pip list 2>/dev/null | grep -iE '^(jax|jaxlib|jax-cuda.*|flax|optax|orbax-checkpoint|grain|protobuf|tensorstore|numpy|etils) ' | tr -s ' ' | paste -sd ';'
nvidia-smi -L 2>/dev/null
