#!/usr/bin/env bash
# Builds gatedrnn._C with AddressSanitizer + UndefinedBehaviorSanitizer in a scratch copy
# of the repository and runs the test suite (or the pytest arguments given) against it.
#   scripts/sanitize.sh                 # whole suite
#   scripts/sanitize.sh tests/test_parity.py -x
# Needs the torch of the current Python and g++'s libasan/libubsan. Python itself is not
# instrumented, so libasan is preloaded; leak checking is off (CPython keeps allocations
# alive at exit by design), every other ASan/UBSan report aborts the run.
set -euo pipefail
python=${PYTHON:-python}
source "$(dirname "$0")/scratch.sh"
flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g"
scratch_build CFLAGS="$flags" CXXFLAGS="$flags" LDFLAGS="-fsanitize=address,undefined"
asan=$(g++ -print-file-name=libasan.so)
ubsan=$(g++ -print-file-name=libubsan.so)
export LD_PRELOAD="$asan:$ubsan"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
scratch_pytest "$@"
