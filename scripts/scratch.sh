# Sourced by the scripts that test a special build of gatedrnn._C: copies the tracked
# files of the repository to a scratch folder and builds the extension there.
#   scratch_build ENV=VALUE...   sets $work, builds with those variables, and points
#                                PYTHONPATH at the build
#   scratch_pytest ARGS...       checks that Python imports that build, then runs pytest
scratch_build() {
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  work=$(mktemp -d /tmp/gatedrnn-scratch.XXXXXX)
  echo "scratch copy: $work"
  git -C "$root" ls-files -z | (cd "$root" && xargs -0 cp --parents -t "$work")
  (cd "$work" && env "$@" "${python:-python}" setup.py build_ext --inplace > build.log 2>&1) \
    || { tail -40 "$work/build.log"; return 1; }
  export PYTHONPATH="$work/python${PYTHONPATH:+:$PYTHONPATH}"
}

scratch_pytest() {
  # The test collection must load this build, not an installed one.
  "${python:-python}" -c "import gatedrnn, sys; p = gatedrnn.__file__; print('testing', p); sys.exit(0 if p.startswith('$work') else 1)"
  (cd "$work" && "${python:-python}" -m pytest -q -p no:cacheprovider "${@:-tests}")
}
