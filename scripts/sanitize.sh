#!/usr/bin/env bash
# Builds gatedrnn._C with AddressSanitizer + UndefinedBehaviorSanitizer in a scratch copy
# of the repository and runs the test suite (or the pytest arguments given) against it.
#   scripts/sanitize.sh                 # whole suite
#   scripts/sanitize.sh tests/test_parity.py -x
# Needs the torch of the current Python and g++'s libasan/libubsan. Python itself is not
# instrumented, so libasan is preloaded; leak checking is off (CPython keeps allocations
# alive at exit by design), every other ASan/UBSan report aborts the run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python}
work=$(mktemp -d /tmp/gatedrnn-sanitize.XXXXXX)
echo "scratch copy: $work"
git -C "$root" ls-files -z | (cd "$root" && xargs -0 cp --parents -t "$work")
cd "$work"
flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g"
CFLAGS="$flags" CXXFLAGS="$flags" LDFLAGS="-fsanitize=address,undefined" \
  "$python" setup.py build_ext --inplace > build.log 2>&1 || { tail -40 build.log; exit 1; }
asan=$(g++ -print-file-name=libasan.so)
ubsan=$(g++ -print-file-name=libubsan.so)
export LD_PRELOAD="$asan:$ubsan"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export PYTHONPATH="$work/python${PYTHONPATH:+:$PYTHONPATH}"
# The test collection must load this build, not an installed one.
"$python" -c "import gatedrnn, sys; p = gatedrnn.__file__; print('testing', p); sys.exit(0 if p.startswith('$work') else 1)"
"$python" -m pytest -q -p no:cacheprovider "${@:-tests}"
