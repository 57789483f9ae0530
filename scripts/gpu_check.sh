#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA H100/H200 and a CUDA build of torch already
# installed (the project's CI has no GPU: this is what runs when one is lent):
#   scripts/gpu_check.sh OUT_DIR
# builds the extension for that GPU alone, runs tests/test_cuda.py, compute-sanitizer's
# memcheck and racecheck on a short subset, and the GPU rows of the benchmark suite, and
# writes every log and result (bench-*/bench.md, .json, .png) under OUT_DIR. Each part has
# its own time limit, so a hang costs that part only; together at most 9 minutes
# (135 + 115 + 55 + 35 + 55 + 40 + 3 x 27 = 516 s, and 3 s each to kill a hung part).
# The summary (OUT_DIR/summary.txt) lists each part's exit status: 0 passed, 124 timed out.
# GPU_CHECK_PARTS="build test_cuda ..." runs only the parts named (default: all of them:
# build test_cuda memcheck racecheck bench-fp32 bench-small-batch bench-tf32 bench-bfloat16
# bench-float16), so that a second, shorter call on a lent machine can rerun what failed.
set -uo pipefail
[ $# -eq 1 ] || { echo "usage: $0 OUT_DIR" >&2; exit 2; }
out=$(mkdir -p "$1" && cd "$1" && pwd)
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
summary="$out/summary.txt"
: > "$summary"
start=$(date +%s)

# part NAME SECONDS COMMAND...: runs COMMAND with a time limit, its output in OUT_DIR/NAME.log
part() {
  local name=$1 limit=$2
  shift 2
  case " ${GPU_CHECK_PARTS:-$name} " in *" $name "*) ;; *) return 0 ;; esac
  echo "== $name (limit ${limit} s, at $(( $(date +%s) - start )) s)"
  timeout --kill-after=3 "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc after $(( $(date +%s) - start )) s" | tee -a "$summary"
  tail -3 "$out/$name.log"
  return 0
}

{
  nvidia-smi
  "$python" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda,
'cuDNN', torch.backends.cudnn.version())"
} > "$out/machine.log" 2>&1

# 1. Build for the GPU that is here only (every architecture from sm_80 takes far longer).
arch=$("$python" -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}.{c[1]}')")
part build 135 env TORCH_CUDA_ARCH_LIST="$arch" GATEDRNN_CUDA=1 MAX_JOBS="$(nproc)" \
  "$python" -m pip install --no-build-isolation --no-deps -e .
"$python" -c "import gatedrnn, gatedrnn._build_info as b; assert b.cuda, b.cuda_skipped" \
  >> "$out/build.log" 2>&1 || echo "build: no CUDA kernels in the build" | tee -a "$summary"

# 2. The GPU tests, all of them (no -x: a first failure must not hide the others), over
# several processes sharing the GPU when pytest-xdist is there.
workers=()
"$python" -c "import xdist" 2>/dev/null && workers=(-n 6)
part test_cuda 115 "$python" -m pytest -q -rfE --durations=15 "${workers[@]}" \
  tests/test_cuda.py -p no:cacheprovider

# 3. compute-sanitizer on a short subset: both forward paths, backward, packed input.
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
# (one line: pytest's -k takes no newline)
subset="(test_gradcheck_cuda and packed and fwd) or (test_persistent_matches_step_path and f32 and packed and fwd)"
part memcheck 55 "$sanitizer" --tool memcheck --error-exitcode 1 \
  "$python" -m pytest -q -x tests/test_cuda.py -p no:cacheprovider -k "$subset"
part racecheck 35 "$sanitizer" --tool racecheck --error-exitcode 1 \
  "$python" -m pytest -q -x tests/test_cuda.py -p no:cacheprovider \
  -k "test_persistent_matches_step_path and f32 and fwd"

# 4. The benchmark rows: float32 with TF32 off (and peak memory); the small batches
# (N = 1, 4, 8 with H = 256, 512, 1024), where the persistent kernels run; then TF32 on,
# bfloat16 and float16 at the three main sizes. A paths column says which forward path
# each side took.
rows=(--device cuda --repeats 10 --min-time 0.2)
part bench-fp32 55 "$python" -m gatedrnn.bench "${rows[@]}" --out "$out/bench-fp32" \
  --configs large small tiny large-2l-bi decode-n1-h512 decode-n64-h512
part bench-small-batch 40 "$python" -m gatedrnn.bench "${rows[@]}" --no-memory \
  --cells lstm gru --out "$out/bench-small-batch" \
  --configs n1-h256 n1-h512 n1-h1024 n4-h256 n4-h512 n4-h1024 n8-h256 n8-h512 n8-h1024
for dtype in tf32 bfloat16 float16; do
  if [ $dtype = tf32 ]; then flag=(--tf32); else flag=(--dtype $dtype); fi
  part "bench-$dtype" 27 "$python" -m gatedrnn.bench "${rows[@]}" "${flag[@]}" --no-memory \
    --configs large small tiny --out "$out/bench-$dtype"
done

echo "total $(( $(date +%s) - start )) s" | tee -a "$summary"
