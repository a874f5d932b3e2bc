#!/usr/bin/env bash
# bcosify_resnet --distributed end to end, on a synthetic CIFAR-10 (tests/tools/make_fixtures):
#  1. two processes with synchronised batch norm train what one process does on the same global
#     batch (each rank's share interleaves into the one-process batch, augmentations by global
#     position): the last epoch's loss agrees to 1e-3 (f32 sums in another order), while without
#     --sync-bn (per-rank statistics) it need not;
#  2. rank 0 alone writes: one report, a checkpoint that records the world size;
#  3. resume: a two-process run stopped after its first checkpoint and resumed with two processes
#     ends byte-identical to an uninterrupted one; resuming with one process is refused;
#  4. mpirun without --distributed is refused (every rank would run the whole experiment), as are
#     a global batch that does not split over the processes and --sync-bn alone.
#  5. train_clip (float32 and bf16 autocast) and bcos_clip_zeroshot (with ../shared): two
#     processes train as one.
# With DEVICE cuda (a build on the CUDA emulator, two emulated GPUs: each rank takes its own, and
# their gradients and synchronised batch norm go through the NCCL stand-in) it runs 1 and 5 with
# --device cuda; 2-4 do not depend on the device.
#   usage: test_mpi_example.sh MPIRUN BUILD_DIR SOURCE_DIR [DEVICE]
set -uo pipefail
mpirun=$1
build=$2
src=$3
device=${4:-cpu}
source "$(dirname "$0")/mpi_env.sh"  # OpenMPI as root, oversubscribed; one thread per process
if [[ $device == cuda ]]; then
  # Full float32 (BCOS_TF32=0): with TF32 a sum taken in another order can flip the 10-bit rounding
  # of the next product's input, and train_clip's two runs drifted 1.4e-4 apart over an epoch (the
  # emulator rounds as TF32); what is tested here is the collectives, at float32's 1e-4.
  export BCOS_CUDA_EMULATOR_DEVICES=2 BCOS_TF32=0
  mpirun_env=(-x BCOS_CUDA_EMULATOR_DEVICES -x BCOS_TF32)
else
  mpirun_env=()
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
"$build/tests/make_fixtures" weights resnet20 "$work/r20.safetensors" 7 >/dev/null || fail "fixtures"
"$build/tests/make_fixtures" cifar "$work/cifar" 192 64 >/dev/null || fail "fixtures"
args=(--arch resnet20 --weights "$work/r20.safetensors" --data "$work/cifar" --test-data "$work/cifar" --batch 32
      --lr 1e-3 --workers 1 --seed 5 --limit-test 64 --gridpg-grids 0 --explain 0 --no-original-gridpg --photos ""
      --device "$device")
two() { timeout -k 5 300 "$mpirun" -np 2 -x BCOS_NUM_THREADS=1 "${mpirun_env[@]}" "$build/examples/bcosify_resnet" "$@"; }
json() {  # json FILE KEY: a number from report.json
  grep -o "\"$2\": [-0-9.e]*" "$1" | head -1 | awk '{print $2}'
}

BCOS_NUM_THREADS=1 "$build/examples/bcosify_resnet" "${args[@]}" --epochs 2 --out "$work/one" >"$work/one.log" 2>&1 ||
  { tail -5 "$work/one.log"; fail "one process"; }
two "${args[@]}" --epochs 2 --distributed --sync-bn --out "$work/sync" >"$work/sync.log" 2>&1 ||
  { tail -20 "$work/sync.log"; fail "two processes, --sync-bn"; }
local_loss="(not run on GPUs)"
if [[ $device == cpu ]]; then  # (printed beside, not checked)
  two "${args[@]}" --epochs 2 --distributed --out "$work/local" >"$work/local.log" 2>&1 ||
    { tail -20 "$work/local.log"; fail "two processes"; }
  local_loss=$(json "$work/local/report.json" last_epoch_loss)
fi
one_loss=$(json "$work/one/report.json" last_epoch_loss)
sync_loss=$(json "$work/sync/report.json" last_epoch_loss)
echo "last epoch loss: one process $one_loss, two with --sync-bn $sync_loss, two with per-rank statistics $local_loss"
awk -v a="$one_loss" -v b="$sync_loss" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 1e-3 * a) }' ||
  fail "two processes with --sync-bn do not train as one process"
[[ $(json "$work/sync/report.json" processes) == 2 ]] || fail "report.json does not record 2 processes"
[[ $(grep -c "wrote .*report.md" "$work/sync.log") -eq 1 ]] || fail "not exactly one rank wrote the report"
grep -a -q '"extra.world_size":"2"' "$work/sync/checkpoint.safetensors" || fail "the checkpoint does not record the world size"

if [[ $device == cpu ]]; then  # (3 and 4 do not depend on the device)
# Resume: stop an 8-epoch two-process run once its first checkpoint is written (SIGTERM to mpirun,
# which passes it on to both ranks), resume it, and compare with an uninterrupted run. A machine
# fast enough to finish before the stop lands gets two more tries.
two "${args[@]}" --epochs 8 --distributed --out "$work/ref" >"$work/ref.log" 2>&1 || { tail -20 "$work/ref.log"; fail "reference"; }
stopped_at=""
for attempt in 1 2 3; do
  rm -rf "$work/stopped"
  "$mpirun" -np 2 -x BCOS_NUM_THREADS=1 "$build/examples/bcosify_resnet" "${args[@]}" --epochs 8 --distributed \
    --out "$work/stopped" >"$work/stopped.log" 2>&1 &
  pid=$!
  for _ in $(seq 6000); do
    [[ -f "$work/stopped/checkpoint.safetensors" ]] && break
    sleep 0.01
  done
  kill -TERM $pid 2>/dev/null
  wait $pid
  stopped_at=$(grep -a -o '"epoch":"[0-9]*"' "$work/stopped/checkpoint.safetensors" 2>/dev/null | head -1 | grep -o '[0-9]*')
  [[ -n "$stopped_at" && "$stopped_at" -lt 8 ]] && break
  stopped_at=""
done
[[ -n "$stopped_at" ]] || fail "could not stop the run before its end in three tries"
echo "stopped after epoch $stopped_at of 8"
BCOS_NUM_THREADS=1 "$build/examples/bcosify_resnet" "${args[@]}" --epochs 8 --out "$work/stopped" --resume \
  >"$work/wrong.log" 2>&1 && fail "resuming a two-process checkpoint with one process was accepted"
grep -q "written by a run of 2 process(es); resume it with as many" "$work/wrong.log" || { tail -3 "$work/wrong.log"; fail "no clear error for a world-size change"; }
two "${args[@]}" --epochs 8 --distributed --out "$work/stopped" --resume >"$work/resumed.log" 2>&1 ||
  { tail -20 "$work/resumed.log"; fail "two-process resume"; }
cmp "$work/ref/bcos_resnet20.safetensors" "$work/stopped/bcos_resnet20.safetensors" ||
  fail "the resumed two-process run does not end where the uninterrupted one does"

two "${args[@]}" --epochs 1 --out "$work/plain" >"$work/plain.log" 2>&1 && fail "mpirun without --distributed was accepted"
grep -q "add --distributed" "$work/plain.log" || { tail -5 "$work/plain.log"; fail "no clear error without --distributed"; }
no_batch=()  # args without its --batch 32 (CLI11 refuses an option given twice)
for ((i = 0; i < ${#args[@]}; i++)); do [[ ${args[i]} == --batch ]] && i=$((i + 1)) || no_batch+=("${args[i]}"); done
two "${no_batch[@]}" --epochs 1 --distributed --batch 33 --out "$work/odd" >"$work/odd.log" 2>&1 && fail "--batch 33 over 2 processes was accepted"
grep -q "\-\-batch 33 does not split over 2 processes" "$work/odd.log" || { tail -5 "$work/odd.log"; fail "no clear error for an odd batch"; }
BCOS_NUM_THREADS=1 "$build/examples/bcosify_resnet" "${args[@]}" --epochs 1 --sync-bn --out "$work/nosync" >"$work/nosync.log" 2>&1 &&
  fail "--sync-bn without --distributed was accepted"
grep -q "sync-bn needs --distributed" "$work/nosync.log" || { tail -5 "$work/nosync.log"; fail "no clear error for --sync-bn alone"; }
fi

# 5. CLIP (needs the CIFAR-10 shards and CLIP's vocabulary from ../shared or $BCOS_DATA): train_clip
#    and bcos_clip_zeroshot gather every rank's embeddings (with their gradients) for their
#    batch-level losses, so two processes with --sync-bn train as one.
data=${BCOS_DATA:-$src/../shared}
if [[ -f "$data/data/clip/bpe_simple_vocab_16e6.txt.gz" && -f "$data/data/cifar10/cifar10-test-000000.tar" ]]; then
  export BCOS_DATA=$data
  # one_vs_two NAME TOLERANCE EXAMPLE LOSS_KEY ARGS...: the example on one process, then on two
  # with --sync-bn (outputs under $work/NAME1, NAME2); the last loss in report.json must agree to
  # TOLERANCE (relative).
  one_vs_two() {
    local name=$1 tol=$2 example=$3 key=$4
    BCOS_NUM_THREADS=1 "$build/examples/$example" "${@:5}" --device "$device" --out "$work/${name}1" \
      >"$work/${name}1.log" 2>&1 ||
      { tail -5 "$work/${name}1.log"; fail "$name, one process"; }
    timeout -k 5 300 "$mpirun" -np 2 -x BCOS_NUM_THREADS=1 -x BCOS_DATA "${mpirun_env[@]}" "$build/examples/$example" \
      "${@:5}" --device "$device" --distributed --sync-bn --out "$work/${name}2" >"$work/${name}2.log" 2>&1 ||
      { tail -20 "$work/${name}2.log"; fail "$name, two processes"; }
    local a b
    a=$(json "$work/${name}1/report.json" "$key")
    b=$(json "$work/${name}2/report.json" "$key")
    echo "$name $key: one process $a, two $b"
    awk -v a="$a" -v b="$b" -v t="$tol" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= t * a) }' ||
      fail "$name: two processes do not train as one"
  }
  one_vs_two train_clip 1e-4 train_clip last_epoch_loss --limit-train 256 --batch 64 --epochs 1 --limit-test 64 \
    --workers 1 --warmup 1
  # Under bf16 autocast the ranks gather bf16 image and text features (MPI moves them as 16-bit
  # words). The products of a rank's half-batch round to bf16 as the whole batch's do except
  # where float32 sums taken in another blocking order straddle a rounding, so the losses agree
  # less closely than float32's: 1e-3 (measured 6e-5 over this epoch; a wrong gather -- words
  # garbled or misplaced -- moves the contrastive loss by far more).
  one_vs_two train_clip_bf16 1e-3 train_clip last_epoch_loss --limit-train 256 --batch 64 --epochs 1 --limit-test 64 \
    --workers 1 --warmup 1 --autocast bf16
  one_vs_two bcos_clip_zeroshot 1e-4 bcos_clip_zeroshot last_loss --clip "$work/train_clip1/clip.safetensors" \
    --limit-train 128 --batch 32 --epochs 1 --limit-test 64 --workers 1 --grids 0 --photos ""
else
  echo "skip CLIP: the CIFAR-10 shards or CLIP's vocabulary are not in $data (set BCOS_DATA)"
fi
echo "PASS"
