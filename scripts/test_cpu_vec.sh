#!/usr/bin/env bash
# Builds gatedrnn._C for another vector ISA (GATEDRNN_CPU_VEC: avx512, avx2 or default)
# in a scratch copy of the repository and runs the tests (or the pytest arguments
# given) against it: a normal install builds only the widest ISA of its machine.
#   scripts/test_cpu_vec.sh avx2
#   scripts/test_cpu_vec.sh default tests/test_parity.py -x
set -euo pipefail
python=${PYTHON:-python}
isa=${1:?usage: test_cpu_vec.sh avx512|avx2|default [pytest args]}
shift
source "$(dirname "$0")/scratch.sh"
scratch_build GATEDRNN_CPU_VEC="$isa"
scratch_pytest "$@"
