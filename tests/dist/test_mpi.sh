#!/usr/bin/env bash
# One multi-process test: `mpirun -np 2 dist_worker MODE` (tests/dist/dist_worker.cpp), checked
# from outside. Passing modes must print "passed" on both ranks; the failure modes must end every
# rank, with a non-zero status and rank 1's reason (or rank 0's timeout) on stderr, well before a
# hang would (the whole run is bounded by `timeout`). DEVICE (cpu, the default, or cuda) is passed
# on to the worker: with cuda the tensors travel through NCCL.
#   usage: test_mpi.sh MPIRUN DIST_WORKER MODE [DEVICE]
set -uo pipefail
mpirun=$1
worker=$2
mode=$3
device=${4:-cpu}
source "$(dirname "$0")/mpi_env.sh"  # OpenMPI as root, oversubscribed; one thread per process
out=$(mktemp)
err=$(mktemp)
trap 'rm -f "$out" "$err"' EXIT
limit=240
timeout_env=()
[[ $mode == timeout ]] && timeout_env=(-x BCOS_DIST_TIMEOUT=3)
# One GPU per rank, as NCCL requires: on the CUDA emulator each process then has two devices
# and rank r takes cuda:r (dist_worker: local rank modulo the device count).
[[ $device == cuda ]] && timeout_env+=(-x BCOS_CUDA_EMULATOR_DEVICES=2)
start=$(date +%s%N)
timeout -k 10 $limit "$mpirun" -np 2 --oversubscribe "${timeout_env[@]}" "$worker" "$mode" "$device" >"$out" 2>"$err"
status=$?
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
cat "$out"
echo "--- stderr (last 15 lines) ---"
tail -n 15 "$err"
echo "--- exit status $status after ${elapsed_ms} ms"

fail() { echo "FAIL: $*"; exit 1; }
[[ $status -eq 124 || $status -eq 137 ]] && fail "still running after $limit s: a hang"
case $mode in
  collectives|equality|unused)
    [[ $status -eq 0 ]] || fail "exit status $status"
    [[ $(grep -c "dist_worker $mode: rank [01] of 2 passed" "$out") -eq 2 ]] || fail "not both ranks passed"
    ;;
  fail-throw)
    [[ $status -ne 0 ]] || fail "exit status 0 although rank 1 failed"
    grep -q "rank 1: dist_worker: rank 1 fails on purpose at step 3" "$err" || fail "rank 1's error not printed"
    ;;
  fail-exit)
    [[ $status -ne 0 ]] || fail "exit status 0 although rank 1 exited mid-run"
    ;;
  timeout)
    [[ $status -ne 0 ]] || fail "exit status 0 although rank 1 never answered"
    grep -q "no answer from the other ranks within 3 s (rank 0 of 2" "$err" || fail "rank 0's timeout not reported"
    (( elapsed_ms < 40000 )) || fail "took ${elapsed_ms} ms: the 3 s timeout did not end the job (rank 1 sleeps 60 s)"
    ;;
esac
echo "PASS $mode ($device)"
