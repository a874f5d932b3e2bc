#!/usr/bin/env bash
# Tests that cannot silently vanish. tests/meson.build runs each doctest executable once per
# family (--test-case=FAMILY:*), so a TEST_CASE whose family is not listed there would compile and
# never run; and a test source missing from the executable's list would not even compile. This
# check asks the executable itself which test cases it holds (doctest's --list-test-cases) and
# fails, naming them, when one belongs to no listed family -- and when a tests/DIR/test_*.cpp file
# is missing from tests/meson.build. It prints how many test cases each family holds. The
# families are read from the `foreach family : [...]` line after the executable's definition in
# tests/meson.build (one line, as the project's before-stop check reads it too).
#   usage: check_families.sh EXECUTABLE SOURCE_ROOT DIR
set -uo pipefail
exe=$1
root=$2
dir=$3
failures=0
name=$(basename "$exe")
line=$(awk -v exe="$name" '$0 ~ "^"exe" = executable\\(" {found = 1} found && /foreach family : \[/ {print; exit}' \
  "$root/tests/meson.build")
mapfile -t families < <(echo "$line" | grep -oE "'[^']+'" | tr -d "'")
if [[ ${#families[@]} -eq 0 ]]; then
  echo "FAIL no 'foreach family : [...]' line for $name in tests/meson.build"
  exit 1
fi

mapfile -t cases < <("$exe" --list-test-cases --no-colors 2>/dev/null | grep -v -e '^\[doctest\]' -e '^====')
if [[ ${#cases[@]} -eq 0 ]]; then
  echo "FAIL $exe lists no test cases"
  exit 1
fi
declare -A count
for f in "${families[@]}"; do count[$f]=0; done
for name in "${cases[@]}"; do
  family=${name%%:*}
  if [[ "$family" == "$name" || -z "${count[$family]+set}" ]]; then
    echo "FAIL test case never runs (its family is not in tests/meson.build's list for $dir): $name"
    failures=$((failures + 1))
  else
    count[$family]=$((count[$family] + 1))
  fi
done
for f in "${families[@]}"; do
  if [[ ${count[$f]} -eq 0 ]]; then
    echo "FAIL family '$f' is listed but has no test case"
    failures=$((failures + 1))
  else
    echo "ok   $f: ${count[$f]} test cases"
  fi
done
for src in "$root/tests/$dir"/test_*.cpp; do
  rel=${src#"$root/tests/"}
  if ! grep -q "'$rel'" "$root/tests/meson.build"; then
    echo "FAIL $rel is not compiled into any test executable (add it to tests/meson.build)"
    failures=$((failures + 1))
  fi
done
echo "${#cases[@]} test cases in $(basename "$exe"), $failures problem(s)"
[[ $failures -eq 0 ]]
