#!/usr/bin/env bash
# Crash safety: a B-cosification run (examples/bcosify_resnet on a small synthetic CIFAR-10 and
# random ResNet-20 weights) is killed with SIGKILL several times -- at random moments, and
# right after a checkpoint write has begun -- and resumed each time with --resume; it must end
# with the same bytes as an uninterrupted run: the final model and the last checkpoint (model,
# AdamW moments, schedule, counters, RNG), and no temporary file left behind.
#   usage: test_kill_resume.sh BUILD_DIR [KILLS]
set -uo pipefail
build=$1
kills_wanted=${2:-6}
fixtures="$build/tests/make_fixtures"
bcosify="$build/examples/bcosify_resnet"
work=$(mktemp -d)
trap 'kill -9 $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

"$fixtures" weights resnet20 "$work/resnet20.safetensors" 7 || exit 1
"$fixtures" cifar "$work/cifar" 192 64 || exit 1
run() {  # run OUT_DIR [--resume]: the same training every time; exec, so `run ... &` gives its pid
  exec "$bcosify" --arch resnet20 --weights "$work/resnet20.safetensors" --data "$work/cifar" --test-data "$work/cifar" \
    --epochs 8 --batch 32 --lr 1e-3 --workers 2 --seed 5 --limit-test 64 --gridpg-grids 0 --explain 0 \
    --no-original-gridpg --photos "" --out "$1" "${@:2}"
}

start=$(date +%s.%N)
(run "$work/ref") >"$work/ref.log" 2>&1 || { echo "FAIL the uninterrupted run"; cat "$work/ref.log"; exit 1; }
ref_seconds=$(echo "$(date +%s.%N) - $start" | bc)
echo "uninterrupted run: ${ref_seconds} s"

out="$work/killed"
RANDOM=12345  # the kill schedule is the same every time
kills=0 write_kills=0 attempts=0 finished=0
while (( attempts < 40 )); do
  attempts=$((attempts + 1))
  resume=()
  [[ -f "$out/checkpoint.safetensors" ]] && resume=(--resume)
  run "$out" "${resume[@]}" >"$work/attempt.log" 2>&1 &
  pid=$!
  if (( kills < kills_wanted && kills % 2 == 1 )); then
    # Wait for a checkpoint write to begin (its temporary file appears), then kill at once.
    while kill -0 $pid 2>/dev/null && [[ ! -e "$out/checkpoint.safetensors.tmp.$pid" ]]; do :; done
    mode="during a checkpoint write"
  elif (( kills < kills_wanted )); then
    # A random moment of the run: 0.2 s .. the uninterrupted run's length.
    sleep "$(echo "scale=3; 0.2 + ($RANDOM / 32767) * $ref_seconds" | bc)"
    mode="at a random moment"
  else
    mode=""
  fi
  if [[ -n "$mode" ]] && kill -9 $pid 2>/dev/null; then
    wait $pid 2>/dev/null
    kills=$((kills + 1))
    step=$(tr '\r' '\n' <"$work/attempt.log" | grep -a -o "epoch [0-9]*/[0-9]*" | tail -1)
    if [[ -e "$out/checkpoint.safetensors.tmp.$pid" ]]; then
      write_kills=$((write_kills + 1))
      # left for the next successful save of the checkpoint to remove (tensor/files.cpp)
      echo "kill $kills $mode: mid-write (${step:-before training})"
    else
      echo "kill $kills $mode (${step:-before training})"
    fi
    continue
  fi
  if wait $pid; then finished=1; break; fi
  echo "FAIL a resumed run exited with an error:"; cat "$work/attempt.log"; exit 1
done

failures=0
check() {  # check DESCRIPTION COMMAND...
  if "${@:2}"; then echo "ok   $1"; else echo "FAIL $1"; failures=$((failures + 1)); fi
}
check "the interrupted run finished (after $kills kills, $write_kills of them mid-write)" test $finished -eq 1
check "... killed at least 3 times" test $kills -ge 3
check "... its final model is bit-identical to the uninterrupted run's" \
  cmp "$work/ref/bcos_resnet20.safetensors" "$out/bcos_resnet20.safetensors"
check "... and so is its last checkpoint (weights, AdamW state, schedule, counters, RNG)" \
  cmp "$work/ref/checkpoint.safetensors" "$out/checkpoint.safetensors"
check "... no temporary file is left" test -z "$(find "$out" -name '*.tmp.*')"
echo "$failures failure(s)"
[[ $failures -eq 0 ]]
