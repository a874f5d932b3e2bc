#!/usr/bin/env bash
# examples/clip, examples/train_clip and examples/bcos_clip_zeroshot end to end: the tokenizer's output, embeddings of the
# golden CLIP files as JSON and safetensors, a few steps of training that save a model the clip
# tool reads back, and the errors. Steps that need ../shared ($BCOS_DATA) skip without it.
#   usage: test_clip_examples.sh BUILD_DIR SOURCE_DIR
set -uo pipefail
build=$1
src=$2
clip="$build/examples/clip"
train="$build/examples/train_clip"
data=${BCOS_DATA:-$src/../shared}
vocab="$data/data/clip/bpe_simple_vocab_16e6.txt.gz"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
source "$(dirname "${BASH_SOURCE[0]}")/checks.sh"

# Errors first: they need nothing.
"$clip" >"$work/out" 2>&1
check "no subcommand: non-zero exit" test $? -ne 0
check "... and says a subcommand is required" contains "$work/out" "subcommand is required"
"$clip" embed --clip "$work/missing.pt" --text x >"$work/out" 2>&1
check "a missing --clip file is refused before any work" contains "$work/out" "File does not exist"
"$clip" embed --clip "$src/tests/golden/checkpoint_zip.pt" --image "$src/tests/golden/checkpoint_zip.pt" >"$work/out" 2>&1
check "a checkpoint that is not a CLIP: exit 1" test $? -eq 1
check "... naming the file" contains "$work/out" "load_clip: $src/tests/golden/checkpoint_zip.pt"

# Image embeddings of the golden OpenAI-format file need no vocabulary.
photo="$data/data/photos/chelsea.png"
if [[ -f "$photo" ]]; then
  "$clip" embed --clip "$src/tests/golden/clip_rn.pt" --image "$photo" --out "$work/emb.safetensors" >"$work/out" 2>&1
  check "embed --out writes a safetensors file" test -s "$work/emb.safetensors"
  check "... holding image_embeddings" contains "$work/emb.safetensors" "image_embeddings"
  "$clip" embed --clip "$src/tests/golden/clip_rn.pt" --image "$photo" --json >"$work/json" 2>"$work/err"
  check "embed --json prints the 128 numbers of the embedding" \
    test "$(tr -d ' \n' <"$work/json" | grep -o '"embedding":\[[^]]*\]' | tr ',' '\n' | wc -l)" -eq 128
else
  echo "skip embed: $photo not found (set BCOS_DATA)"
fi

if [[ ! -f "$vocab" ]]; then
  echo "skip tokenize / train: $vocab not found (set BCOS_DATA)"
else
  check "tokenize prints OpenAI's ids" \
    test "$("$clip" tokenize --vocab "$vocab" "a photo of a cat.")" == "49406 320 1125 539 320 2368 269 49407"
  "$clip" tokenize --vocab "$vocab" --context-length 5 "a photo of a cat." >"$work/out" 2>&1
  check "a text longer than the context is an error" contains "$work/out" "more than the context length 5"
  check "... or cut with --truncate" \
    test "$("$clip" tokenize --vocab "$vocab" --context-length 5 --truncate "a photo of a cat.")" == "49406 320 1125 539 49407"
  "$clip" embed --clip "$src/tests/golden/clip_vit.pt" --vocab "$vocab" --text "a cat" >"$work/out" 2>&1
  check "token ids beyond a model's vocabulary are an error" contains "$work/out" "is out of range for 500 ids in the model's vocabulary"

  shards="$data/data/cifar10/cifar10-train-{000000..000004}.tar"
  if [[ -f "$data/data/cifar10/cifar10-train-000000.tar" ]]; then
    BCOS_DATA="$data" "$train" --vocab "$vocab" --epochs 1 --limit-train 256 --batch 64 --limit-test 128 \
      --vision-width 8 --vision-layers 1,1 --embed-dim 32 --text-width 32 --text-layers 1 --text-heads 1 \
      --context-length 16 --warmup 1 --out "$work/train" >"$work/out" 2>&1
    check "train_clip trains a tiny CLIP and evaluates it (exit 0)" test $? -eq 0
    check "... writing clip.safetensors, a checkpoint and report.json" \
      test -s "$work/train/clip.safetensors" -a -s "$work/train/checkpoint.safetensors" -a -s "$work/train/report.json"
    check "... with a zero-shot top-1 in the report" contains "$work/train/report.json" '"top1"'
    "$clip" zeroshot --clip "$work/train/clip.safetensors" --vocab "$vocab" \
      --data "$data/data/cifar10/cifar10-test-000000.tar" --limit 64 --json >"$work/json" 2>"$work/err"
    check "the clip tool reads what train_clip saved (zero-shot, JSON)" contains "$work/json" '"samples": 64'
    BCOS_DATA="$data" "$train" --vocab "$vocab" --epochs 2 --limit-train 256 --batch 64 --test-data "" \
      --vision-width 8 --vision-layers 1,1 --embed-dim 32 --text-width 32 --text-layers 1 --text-heads 1 \
      --context-length 16 --warmup 1 --out "$work/train" --resume >"$work/out" 2>&1
    check "--resume continues after the saved epoch" contains "$work/out" "after epoch 1"
    # mixed precision: bf16 products, and f16 with the loss scaler; a device that is not there is refused
    for amp in bf16 f16; do
      BCOS_DATA="$data" "$train" --vocab "$vocab" --epochs 1 --limit-train 128 --batch 64 --test-data "" \
        --vision-width 8 --vision-layers 1,1 --embed-dim 32 --text-width 32 --text-layers 1 --text-heads 1 \
        --context-length 16 --warmup 1 --autocast $amp --out "$work/train_$amp" >"$work/out" 2>&1
      check "train_clip --autocast $amp trains (exit 0)" test $? -eq 0
      check "... and says so in report.json" contains "$work/train_$amp/report.json" "\"autocast\": \"$amp\""
    done
    check "... the f16 checkpoint keeps its loss scale for a resume" contains "$work/train_f16/checkpoint.safetensors" \
      "grad_scaler.scale"
    if [[ "$(nvidia-smi -L 2>/dev/null | wc -l)" == 0 ]]; then
      BCOS_DATA="$data" "$train" --vocab "$vocab" --epochs 1 --limit-train 128 --batch 64 --test-data "" \
        --device cuda --out "$work/train_cuda" >"$work/out" 2>&1
      check "train_clip --device cuda without a GPU is refused" contains "$work/out" "--device cuda: no CUDA device here"
    fi
    # a learning rate that blows the weights up: the run stops on the non-finite loss, before updating
    for anomaly in "" --detect-anomaly; do
      BCOS_DATA="$data" "$train" --vocab "$vocab" --epochs 1 --limit-train 256 --batch 64 --test-data "" \
        --vision-width 8 --vision-layers 1,1 --embed-dim 32 --text-width 32 --text-layers 1 --text-heads 1 \
        --context-length 16 --warmup 1 --lr 1e30 --out "$work/train_nan" $anomaly >"$work/out" 2>&1
      check "train_clip $anomaly stops on a NaN (exit 1)" test $? -eq 1
    done
    check "... --detect-anomaly names the op that produced it" contains "$work/out" "anomaly detection: Linear produced NaN"
    BCOS_DATA="$data" "$train" --vocab "$vocab" --epochs 1 --limit-train 256 --batch 64 --test-data "" \
      --vision-width 8 --vision-layers 1,1 --embed-dim 32 --text-width 32 --text-layers 1 --text-heads 1 \
      --context-length 16 --warmup 1 --lr 1e30 --out "$work/train_nan" >"$work/out" 2>&1
    check "... without it, the loss check stops before the update" contains "$work/out" "stopped before the update"

    # bcos_clip_zeroshot with that tiny CLIP as the teacher: the whole pipeline, briefly.
    bcz="$build/examples/bcos_clip_zeroshot"
    BCOS_DATA="$data" "$bcz" --clip "$work/train/clip.safetensors" --vocab "$vocab" --epochs 1 --limit-train 128 \
      --batch 64 --limit-test 200 --grids 2 --photos "" --out "$work/bcos" >"$work/out" 2>&1
    check "bcos_clip_zeroshot distils, evaluates and explains (exit 0)" test $? -eq 0
    check "... passing the b = 1 equivalence check" contains "$work/out" "b = 1 equivalence: relative error"
    check "... writing report.json with both towers' zero-shot" contains "$work/bcos/report.json" '"student_top1"'
    check "... report.md, the student and a checkpoint" \
      test -s "$work/bcos/report.md" -a -s "$work/bcos/student.safetensors" -a -s "$work/bcos/checkpoint.safetensors"
    check "... and the explanation figures" test -s "$work/bcos/classes.png" -a -s "$work/bcos/prompts.png"
    BCOS_DATA="$data" "$bcz" --clip "$work/train/clip.safetensors" --vocab "$vocab" --epochs 2 --limit-train 128 \
      --batch 64 --limit-test 64 --grids 0 --photos "" --out "$work/bcos" --resume >"$work/out" 2>&1
    check "bcos_clip_zeroshot --resume continues after the saved epoch" contains "$work/out" "after epoch 1"
    BCOS_DATA="$data" "$bcz" --clip "$work/train/clip.safetensors" --vocab "$vocab" --epochs 1 --limit-train 128 \
      --batch 64 --limit-test 64 --grids 0 --photos "" --autocast bf16 --out "$work/bcos_bf16" >"$work/out" 2>&1
    check "bcos_clip_zeroshot --autocast bf16 distils (exit 0)" test $? -eq 0
    BCOS_DATA="$data" "$bcz" --clip "$work/missing.safetensors" --vocab "$vocab" --out "$work/bcos2" >"$work/out" 2>&1
    check "bcos_clip_zeroshot: a missing teacher file is refused" test $? -ne 0
    check "... naming it" contains "$work/out" "missing.safetensors does not exist"
  else
    echo "skip train_clip: $shards not found (set BCOS_DATA)"
  fi
fi

echo "$failures failure(s)"
[[ $failures -eq 0 ]]
