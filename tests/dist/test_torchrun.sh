#!/usr/bin/env bash
# A torchrun-style job of two GPU ranks, started without mpirun: RANK / WORLD_SIZE / LOCAL_RANK /
# MASTER_ADDR / MASTER_PORT, one process per rank, as torchrun sets them. There is no MPI, so the
# NCCL id travels over dist's TCP rendezvous and everything, barriers included, goes through
# NCCL: `dist_worker MODE cuda` on each rank. Like torchrun, the script ends the other rank once
# one has failed. Passing modes must print "passed" on both ranks; fail-exit and timeout must end
# rank 0 with an error well before a hang would; shared-gpu (the collectives with both ranks on
# one GPU, which NCCL refuses) must end both with that reason.
#   usage: test_torchrun.sh DIST_WORKER MODE
set -uo pipefail
worker=$1
mode=$2
export BCOS_NUM_THREADS=1
export BCOS_CUDA_EMULATOR_DEVICES=2  # one GPU per rank on the CUDA emulator (NCCL refuses a shared one)
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
limit=240
timeout_env=()
[[ $mode == timeout ]] && timeout_env=(BCOS_DIST_TIMEOUT=3)
worker_mode=$mode
[[ $mode == shared-gpu ]] && export BCOS_CUDA_EMULATOR_DEVICES=1 && worker_mode=collectives
start=$(date +%s%N)
pids=()
for rank in 0 1; do
  env RANK=$rank WORLD_SIZE=2 LOCAL_RANK=$rank MASTER_ADDR=127.0.0.1 MASTER_PORT=$port "${timeout_env[@]}" \
    timeout -k 10 $limit "$worker" "$worker_mode" cuda >"$dir/out$rank" 2>"$dir/err$rank" &
  pids+=($!)
done
wait "${pids[0]}"
status0=$?
if [[ $status0 -ne 0 ]]; then
  # torchrun ends the others. In shared-gpu, rank 1 has been told the reason too and is on its way
  # out: up to 10 s to say so first (killed at once, a loaded machine sometimes lost its message).
  if [[ $mode == shared-gpu ]]; then
    for _ in $(seq 100); do kill -0 "${pids[1]}" 2>/dev/null || break; sleep 0.1; done
  fi
  kill "${pids[1]}" 2>/dev/null
fi
wait "${pids[1]}"
status1=$?
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
for rank in 0 1; do
  cat "$dir/out$rank"
  echo "--- rank $rank stderr (last 8 lines) ---"
  tail -n 8 "$dir/err$rank"
done
echo "--- exit status $status0 / $status1 after ${elapsed_ms} ms"

fail() { echo "FAIL: $*"; exit 1; }
[[ $status0 -eq 124 || $status0 -eq 137 ]] && fail "rank 0 still running after $limit s: a hang"
case $mode in
  collectives|equality|unused)
    [[ $status0 -eq 0 && $status1 -eq 0 ]] || fail "exit status $status0 / $status1"
    [[ $(cat "$dir/out0" "$dir/out1" | grep -c "dist_worker $mode: rank [01] of 2 passed") -eq 2 ]] || fail "not both ranks passed"
    ;;
  fail-exit)
    [[ $status0 -ne 0 ]] || fail "rank 0 ended well although rank 1 exited mid-run"
    grep -q "lost rank 1" "$dir/err0" || fail "rank 0 did not say that it lost rank 1"
    ;;
  timeout)
    [[ $status0 -ne 0 ]] || fail "rank 0 ended well although rank 1 never answered"
    grep -q "no answer from the other ranks within 3 s (rank 0 of 2" "$dir/err0" || fail "rank 0's timeout not reported"
    (( elapsed_ms < 40000 )) || fail "took ${elapsed_ms} ms: the 3 s timeout did not end rank 0 (rank 1 sleeps 60 s)"
    ;;
  shared-gpu)
    [[ $status0 -ne 0 && $status1 -ne 0 ]] || fail "two ranks on one GPU were not refused ($status0 / $status1)"
    grep -q "duplicate GPU: ranks 0 and 1 are both on cuda:0" "$dir/err0" || fail "rank 0 did not name the shared GPU"
    grep -q "duplicate GPU" "$dir/err1" || fail "rank 1 did not say why it stopped"
    ;;
  *) fail "no such mode here: $mode" ;;
esac
echo "PASS $mode (torchrun-style, NCCL only)"
