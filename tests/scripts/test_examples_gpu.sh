#!/usr/bin/env bash
# The examples with --device cuda, end to end: on the CPU emulator in CI (build-emu), on the GPU in
# scripts/gpu_check. The parity cases check every kernel; these check what only a whole program
# does: every tensor a run makes (masks, targets, text embeddings, resampled positions) on the
# model's device, identity checks not blurred by TF32, checkpoints written from device tensors and
# resumed onto the device, reports written. bcosify_resnet, evaluate and predict run on synthetic
# data (tests/tools/make_fixtures.cpp), clip embed on a golden CLIP file beside the CPU's; clip
# zeroshot, train_clip and bcos_clip_zeroshot need the CLIP vocabulary and the CIFAR-10 test
# shard: $BCOS_DATA, else ../shared, else .gpu_data (what scripts/pack_gpu_data packs for a GPU
# machine), and skip without them. Exit 77 (skipped) where the build has no CUDA device.
#   usage: test_examples_gpu.sh BUILD_DIR SOURCE_DIR
set -uo pipefail
build=$1
src=$2
data=${BCOS_DATA:-$src/../shared}
[[ -z "${BCOS_DATA:-}" && ! -d "$src/../shared" && -d "$src/.gpu_data" ]] && data="$src/.gpu_data"
fixtures="$build/tests/make_fixtures"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
source "$(dirname "${BASH_SOURCE[0]}")/checks.sh"
show_on_failure() { (( $1 == 0 )) || tail -20 "$2"; }
# exits_zero DESCRIPTION COMMAND...: runs COMMAND (its output in $work/out) and checks it exits 0,
# showing the output's tail if not
exits_zero() {
  "${@:2}" >"$work/out" 2>&1
  local status=$?
  check "$1" test $status -eq 0
  show_on_failure $status "$work/out"
}
# json_number FILE KEY: the number after "KEY": in FILE (a report.json)
json_number() { grep -o "\"$2\": [-0-9.e+]*" "$1" 2>/dev/null | head -1 | awk '{print $2}'; }
# close A B: the numbers A and B agree -- to the bit on the emulator (EMULATED=1: one machine's
# code runs both), within 1e-4 relative on a GPU (cuDNN may pick backward algorithms whose sums
# vary from run to run in the last bits)
close() {
  awk -v a="$1" -v b="$2" -v exact="${EMULATED:-0}" 'BEGIN {d = a - b; if (d < 0) d = -d; m = a < 0 ? -a : a
    exit !(a != "" && b != "" && (exact == 1 ? a == b : d <= 1e-4 * m))}'
}
# near A B: within 1e-3 relative, on the emulator too (two computations alike but not the same)
near() { awk -v a="$1" -v b="$2" 'BEGIN {d = a - b; if (d < 0) d = -d; exit !(a != "" && b != "" && d <= 1e-3 * (a < 0 ? -a : a))}'; }
# at_most FILE PATTERN LIMIT: the number after PATTERN in FILE is there and at most LIMIT
at_most() {
  local v
  v=$(grep -o -- "$2 [-0-9.e+]*" "$1" | head -1 | awk '{print $NF}')
  [[ -n "$v" ]] && awk -v v="$v" -v l="$3" 'BEGIN {exit !(v + 0 <= l + 0)}'
}

"$fixtures" weights resnet20 "$work/resnet20.safetensors" 3 || exit 1
"$fixtures" cifar "$work/cifar" 96 64 || exit 1
"$fixtures" png "$work/photo.png" 40 30 || exit 1
# predict first: it says whether there is a device at all.
"$build/examples/predict" --device cuda --arch resnet20 --weights "$work/resnet20.safetensors" \
  --image "$work/photo.png" >"$work/out" 2>&1
status=$?
if grep -q "no CUDA device here" "$work/out"; then
  echo "skip: no CUDA device here (the emulator's build, or a GPU machine, runs these)"
  exit 77
fi
check "predict --device cuda (exit 0)" test $status -eq 0
show_on_failure $status "$work/out"

# bcosify_resnet: the b = 1 checks, two epochs of fine-tuning, GridPG, explanations, then a resume.
bcosify() {  # bcosify OUT_DIR ARGS...
  "$build/examples/bcosify_resnet" --device cuda --arch resnet20 --weights "$work/resnet20.safetensors" \
    --data "$work/cifar" --test-data "$work/cifar" --batch 32 --lr 1e-3 --workers 1 --seed 5 --limit-test 64 \
    --gridpg-grids 2 --explain 2 --photos "" --out "$1" "${@:2}"
}
exits_zero "bcosify_resnet --device cuda converts, fine-tunes and explains (exit 0)" bcosify "$work/bcos" --epochs 1
check "... its b = 1 equivalence within 1e-4 (issue 12's bound)" \
  at_most "$work/out" "max relative logit error" 1e-4
check "... completeness within 1e-4" at_most "$work/out" "completeness: max relative error" 1e-4
check "... writing the model, a checkpoint and report.json" \
  test -s "$work/bcos/bcos_resnet20.safetensors" -a -s "$work/bcos/checkpoint.safetensors" -a -s "$work/bcos/report.json"
# ... with each step replayed from a CUDA graph once b and the biases have settled: of the 3 steps,
# the first eager, the second (settled) captured and replayed, the third replayed.
exits_zero "bcosify_resnet --device cuda --cuda-graph (exit 0)" bcosify "$work/bcos_graph" --epochs 1 --cuda-graph
check "... replaying 2 steps" test "$(json_number "$work/bcos_graph/report.json" graph_replays)" = 2
check "... to the loss it reaches without (eager $(json_number "$work/bcos/report.json" last_epoch_loss), graph $(
  json_number "$work/bcos_graph/report.json" last_epoch_loss))" close "$(json_number "$work/bcos/report.json" \
  last_epoch_loss)" "$(json_number "$work/bcos_graph/report.json" last_epoch_loss)"
exits_zero "bcosify_resnet --device cuda --resume continues from the checkpoint (exit 0)" \
  bcosify "$work/bcos" --epochs 2 --resume
check "... after epoch 1" contains "$work/out" "after epoch 1"

exits_zero "bcosify_resnet --device cuda --autocast bf16 (exit 0)" bcosify "$work/bcos_bf16" --epochs 1 --autocast bf16

# evaluate on the GPU.
exits_zero "evaluate --device cuda (exit 0)" "$build/examples/evaluate" --device cuda --arch resnet20 \
  --weights "$work/resnet20.safetensors" --data "$work/cifar" --limit 64
# ... with the forward replayed from a CUDA graph: of the 64 test images, five full batches of 12
# (one eager, then the graph captured and replayed four times) and a last one of 4 (eager): the
# same logits as without.
for mode in eager graph; do
  "$build/examples/evaluate" --device cuda --arch resnet20 --weights "$work/resnet20.safetensors" --data "$work/cifar" \
    --batch 12 --save-logits "$work/logits_$mode.safetensors" $([[ $mode == graph ]] && echo --cuda-graph) \
    >"$work/eval_$mode" 2>&1 || echo "evaluate ($mode) failed: $(tail -3 "$work/eval_$mode")"
done
check "evaluate --device cuda --cuda-graph gives the logits evaluate gives without" \
  cmp "$work/logits_eager.safetensors" "$work/logits_graph.safetensors"

# clip embed: the golden OpenAI-format RN tower (tests/golden) on both devices, the same embedding
# to TF32's precision (measured 1.2e-4 on the emulator, which rounds as TF32; the numbers are ~0.1).
embed_numbers() {  # embed_numbers DEVICE: the 128 numbers of the photo's embedding, one per line
  "$build/examples/clip" embed --device "$1" --clip "$src/tests/golden/clip_rn.pt" --image "$work/photo.png" --json \
    2>"$work/err" | tr -d ' \n' | grep -o '"embedding":\[[^]]*\]' | sed 's/.*\[//; s/\]//' | tr ',' '\n'
}
embed_numbers cpu >"$work/cpu.txt"
embed_numbers cuda >"$work/cuda.txt"
check "clip embed gives the 128 numbers of the embedding on both devices" \
  test "$(wc -l <"$work/cpu.txt")" -eq 128 -a "$(wc -l <"$work/cuda.txt")" -eq 128
check "... those of the CPU within 2e-3 (largest difference $(paste "$work/cpu.txt" "$work/cuda.txt" |
  awk '{d = $1 - $2; if (d < 0) d = -d; if (d > m) m = d} END {printf "%.1e", m}'))" \
  awk 'NR == FNR {a[FNR] = $1; next} {d = a[FNR] - $1; if (d < 0) d = -d; if (d > 2e-3 || $1 == "") bad = 1}
       END {exit bad || FNR != 128}' "$work/cpu.txt" "$work/cuda.txt"

vocab="$data/data/clip/bpe_simple_vocab_16e6.txt.gz" shard="$data/data/cifar10/cifar10-test-000000.tar"
if [[ -f "$vocab" && -f "$shard" ]]; then
  tiny=(--vision-width 8 --vision-layers 1,1 --embed-dim 32 --text-width 32 --text-layers 1 --text-heads 1
        --context-length 16 --warmup 1)
  exits_zero "train_clip --device cuda trains a tiny CLIP and evaluates it (exit 0)" \
    "$build/examples/train_clip" --device cuda --vocab "$vocab" --data "$shard" --captions-from-classes \
    --test-data "$shard" --epochs 1 --limit-train 256 --batch 64 --limit-test 64 "${tiny[@]}" --out "$work/clip"
  check "... with a zero-shot top-1 in report.json" contains "$work/clip/report.json" '"top1"'
  # ... with its second step captured in a CUDA graph and replayed, then the third and fourth: every
  # caption encoded there (not each distinct one once), so the sums differ in the last bits (4e-6
  # relative on the emulator; a replay of a stale batch: 7e-3).
  exits_zero "train_clip --device cuda --cuda-graph (exit 0)" \
    "$build/examples/train_clip" --device cuda --vocab "$vocab" --data "$shard" --captions-from-classes \
    --test-data "" --epochs 1 --limit-train 256 --batch 64 "${tiny[@]}" --cuda-graph --out "$work/clip_graph"
  check "... replaying 3 steps" test "$(json_number "$work/clip_graph/report.json" graph_replays)" = 3
  check "... to the loss of the run without (eager $(json_number "$work/clip/report.json" last_epoch_loss), graph $(
    json_number "$work/clip_graph/report.json" last_epoch_loss))" near "$(json_number \
    "$work/clip/report.json" last_epoch_loss)" "$(json_number "$work/clip_graph/report.json" last_epoch_loss)"
  exits_zero "train_clip --device cuda --autocast bf16 (exit 0)" \
    "$build/examples/train_clip" --device cuda --vocab "$vocab" --data "$shard" --captions-from-classes \
    --test-data "" --epochs 1 --limit-train 128 --batch 64 "${tiny[@]}" --autocast bf16 --out "$work/clip_bf16"
  "$build/examples/clip" zeroshot --device cuda --clip "$work/clip/clip.safetensors" --vocab "$vocab" \
    --data "$shard" --limit 64 --json >"$work/json" 2>"$work/out"
  status=$?
  check "clip zeroshot --device cuda reads what train_clip saved (exit 0)" test $status -eq 0
  show_on_failure $status "$work/out"
  check "... over 64 samples" contains "$work/json" '"samples": 64'
  exits_zero "bcos_clip_zeroshot --device cuda distils, evaluates and explains (exit 0)" \
    "$build/examples/bcos_clip_zeroshot" --device cuda --clip "$work/clip/clip.safetensors" --vocab "$vocab" \
    --data "$shard" --test-data "$shard" --epochs 1 --limit-train 128 --batch 64 --limit-test 64 --grids 1 --photos "" \
    --out "$work/bcos_clip"
  check "... its b = 1 equivalence within 1e-4" at_most "$work/out" "b = 1 equivalence: relative error" 1e-4
  check "... with both towers' zero-shot in report.json" contains "$work/bcos_clip/report.json" '"student_top1"'
  # ... with each step's forward and backward replayed from a CUDA graph: 8 steps of 32 (one eager,
  # one captured, six replays), the loss of the eager run.
  for mode in eager graph; do
    "$build/examples/bcos_clip_zeroshot" --device cuda --clip "$work/clip/clip.safetensors" --vocab "$vocab" \
      --data "$shard" --test-data "$shard" --epochs 1 --limit-train 256 --batch 32 --limit-test 32 --grids 0 \
      --photos "" --out "$work/bcos_clip_$mode" $([[ $mode == graph ]] && echo --cuda-graph) >"$work/distil_$mode" 2>&1 ||
      echo "bcos_clip_zeroshot ($mode) failed: $(tail -3 "$work/distil_$mode")"
  done
  last_loss() { json_number "$work/bcos_clip_$1/report.json" last_loss; }
  check "bcos_clip_zeroshot --device cuda --cuda-graph replays 7 steps" \
    test "$(json_number "$work/bcos_clip_graph/report.json" graph_replays)" = 7
  check "... distilling to the loss it reaches without (eager $(last_loss eager), graph $(last_loss graph))" \
    close "$(last_loss eager)" "$(last_loss graph)"
  exits_zero "bcos_clip_zeroshot --device cuda --autocast bf16 (exit 0)" \
    "$build/examples/bcos_clip_zeroshot" --device cuda --clip "$work/clip/clip.safetensors" --vocab "$vocab" \
    --data "$shard" --test-data "$shard" --epochs 1 --limit-train 128 --batch 64 --limit-test 64 --grids 0 --photos "" \
    --autocast bf16 --out "$work/bcos_clip_bf16"
else
  echo "skip train_clip / clip / bcos_clip_zeroshot --device cuda: $vocab or $shard not found (set BCOS_DATA)"
fi

echo "$failures failure(s)"
[[ $failures -eq 0 ]]
