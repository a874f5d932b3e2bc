# What the end-to-end script tests share (sourced): a named check that counts failures, and a
# file-contains test. Each test ends with `echo "$failures failure(s)"; [[ $failures -eq 0 ]]`.
failures=0
check() {  # check DESCRIPTION COMMAND...: "ok" or "FAIL" and the description; counts failures
  if "${@:2}"; then echo "ok   $1"; else echo "FAIL $1"; failures=$((failures + 1)); fi
}
contains() { grep -q -- "$2" "$1"; }  # contains FILE TEXT
