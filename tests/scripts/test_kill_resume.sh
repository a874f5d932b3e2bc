#!/usr/bin/env bash
# Crash safety: a B-cosification run (examples/bcosify_resnet on a small synthetic CIFAR-10 and
# random ResNet-20 weights) is killed with SIGKILL several times -- at random moments before
# and during training, and as a checkpoint write begins -- and resumed each time with --resume; it must end
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
# The kill schedule follows the run's progress, not the clock, so a slow or busy machine gets
# the same kills: in turn (1) a random moment in the first 1.5 s (loading, evaluating the
# original, converting), (2) the instant the checkpoint's temporary file appears (mid-write),
# (3) a random moment of the attempt's second epoch (after one checkpoint of its own).
RANDOM=12345
kills=0 write_kills=0 attempts=0 finished=0
epoch_shown() {  # epoch_shown N: the attempt's progress bar has reached epoch N
  tr '\r' '\n' <"$work/attempt.log" 2>/dev/null | grep -a -q "epoch $1/"
}
while (( attempts < 40 )); do
  attempts=$((attempts + 1))
  resume=()
  [[ -f "$out/checkpoint.safetensors" ]] && resume=(--resume)
  done_epochs=$(grep -a -o -m1 '"epoch":"[0-9]*"' "$out/checkpoint.safetensors" 2>/dev/null | head -1 | grep -o '[0-9]*' || true)
  run "$out" "${resume[@]}" >"$work/attempt.log" 2>&1 &
  pid=$!
  mode=""
  if (( kills < kills_wanted )); then
    case $((kills % 3)) in
      0) sleep "$(echo "scale=3; 0.1 + ($RANDOM / 32767) * 1.4" | bc)"
         mode="early" ;;
      1) while kill -0 $pid 2>/dev/null && [[ ! -e "$out/checkpoint.safetensors.tmp.$pid" ]]; do :; done
         mode="as a checkpoint write began" ;;
      2) target=$(( ${done_epochs:-0} + 2 ))
         while kill -0 $pid 2>/dev/null && ! epoch_shown $target; do sleep 0.02; done
         sleep "$(echo "scale=3; ($RANDOM / 32767) * 0.3" | bc)"
         mode="during an epoch" ;;
    esac
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

source "$(dirname "${BASH_SOURCE[0]}")/checks.sh"
check "the interrupted run finished (after $kills kills, $write_kills of them mid-write)" test $finished -eq 1
check "... killed at least 3 times" test $kills -ge 3
check "... its final model is bit-identical to the uninterrupted run's" \
  cmp "$work/ref/bcos_resnet20.safetensors" "$out/bcos_resnet20.safetensors"
check "... and so is its last checkpoint (weights, AdamW state, schedule, counters, RNG)" \
  cmp "$work/ref/checkpoint.safetensors" "$out/checkpoint.safetensors"
check "... no temporary file is left" test -z "$(find "$out" -name '*.tmp.*')"
echo "$failures failure(s)"
[[ $failures -eq 0 ]]
