#!/usr/bin/env bash
# Bad input end to end: every example, given missing or unreadable files, weights of another
# architecture, corrupt checkpoints, empty datasets, a shard corrupted mid-epoch, out-of-range
# labels, 1 x 1 and 50,000-pixel-wide images, or a disk that fills up while saving, must print
# one clear line naming the problem and exit 1 -- no crash, no sanitizer report, no uncaught
# exception, nothing half-written. All inputs are synthetic (tests/tools/make_fixtures); the
# CLIP steps that need OpenAI's vocabulary use $BCOS_DATA (default ../shared) and skip without.
#   usage: test_bad_input.sh BUILD_DIR SOURCE_DIR
set -uo pipefail
build=$1
src=$2
ex="$build/examples"
fx="$build/tests/make_fixtures"
data=${BCOS_DATA:-$src/../shared}
vocab="$data/data/clip/bpe_simple_vocab_16e6.txt.gz"
work=$(mktemp -d)
trap 'umount "$work/full" 2>/dev/null; rm -rf "$work"' EXIT
failures=0
ok() { echo "ok   $1"; }
bad() { echo "FAIL $1"; failures=$((failures + 1)); }

# expect_error DESCRIPTION PATTERN COMMAND...: a non-zero exit status that is not a signal (1 for
# errors raised while running, CLI11's 100+ for options it rejects), and the last line of stderr
# that is not CLI11's "Run with --help" hint (progress bars come before it) contains PATTERN;
# no abort, crash or sanitizer report.
expect_error() {
  local what=$1 pattern=$2
  "${@:3}" >"$work/stdout" 2>"$work/stderr"
  local rc=$?
  local last
  last=$(tr '\r' '\n' <"$work/stderr" | grep -a -v -e '^\s*$' -e '^Run with --help' | tail -1)
  if [[ $rc -eq 0 || $rc -ge 128 ]]; then
    bad "$what: exit status $rc (expected an error)"; tail -5 "$work/stderr"
  elif grep -a -q -e "AddressSanitizer\|runtime error:\|terminate called\|Segmentation" "$work/stderr"; then
    bad "$what: a crash or sanitizer report"; tail -20 "$work/stderr"
  elif [[ "$last" != *"$pattern"* ]]; then
    bad "$what: the error line does not say '$pattern': $last"
  else
    ok "$what: $last"
  fi
}
# expect_success DESCRIPTION COMMAND...
expect_success() {
  if "${@:2}" >"$work/stdout" 2>"$work/stderr"; then ok "$1"; else bad "$1 (exit $?)"; tail -5 "$work/stderr"; fi
}

# ---- fixtures ---------------------------------------------------------------------------
"$fx" weights resnet20 "$work/resnet20.safetensors" || exit 1
"$fx" weights resnet18 "$work/resnet18.safetensors" || exit 1
"$fx" cifar "$work/cifar" 100 40 || exit 1
"$fx" png "$work/photo.png" 40 30 && "$fx" png "$work/tiny.png" 1 1 && "$fx" png "$work/wide.png" 50000 2 || exit 1
head -c 5000 /dev/urandom >"$work/random.pt"
head -c 3000 "$work/resnet20.safetensors" >"$work/truncated.safetensors"
mkdir -p "$work/empty_dir" "$work/weights_dir"
: >"$work/empty.tar"
mkdir -p "$work/empty_cifar" && : >"$work/empty_cifar/test_batch.bin"
# out-of-range labels: the CIFAR folder with record 7 of the test file and record 3 of the first
# training file labelled 12
cp -r "$work/cifar" "$work/cifar_label"
printf '\x0c' | dd of="$work/cifar_label/test_batch.bin" bs=1 seek=$((7 * 3073)) conv=notrunc status=none
printf '\x0c' | dd of="$work/cifar_label/data_batch_1.bin" bs=1 seek=$((3 * 3073)) conv=notrunc status=none
# ImageFolder with extreme images: 1 x 1 and 50,000 x 2 pixels
mkdir -p "$work/folder/cat" "$work/folder/dog" && cp "$work/tiny.png" "$work/folder/cat/" && cp "$work/wide.png" "$work/folder/dog/"
# WebDataset shards of 12 samples; in the corrupt one, sample 6's PNG is garbage, and the
# truncated one ends inside sample 8
mkdir -p "$work/wds"
members=()
for i in $(seq -w 0 11); do
  "$fx" png "$work/wds/s$i.png" 32 32 || exit 1
  echo $((10#$i % 10)) >"$work/wds/s$i.cls"
  members+=("s$i.png" "s$i.cls")
done
tar -C "$work/wds" -cf "$work/shard.tar" "${members[@]}"
echo 15 >"$work/wds/s04.cls"
tar -C "$work/wds" -cf "$work/label15.tar" "${members[@]}"
echo 4 >"$work/wds/s04.cls"
head -c 600 /dev/urandom >"$work/wds/s06.png"
tar -C "$work/wds" -cf "$work/corrupt.tar" "${members[@]}"
head -c $(( $(stat -c %s "$work/shard.tar") * 2 / 3 )) "$work/shard.tar" >"$work/truncated.tar"

W20=(--arch resnet20 --weights "$work/resnet20.safetensors")

# ---- evaluate -----------------------------------------------------------------------------
expect_error "evaluate: missing weights" "does not exist" "$ex/evaluate" --arch resnet20 --weights "$work/none.pt" --data "$work/cifar"
expect_error "evaluate: weights are a directory" "$work/weights_dir" "$ex/evaluate" --arch resnet20 --weights "$work/weights_dir" --data "$work/cifar"
if [[ $(id -u) -ne 0 ]]; then  # root reads any file
  cp "$work/resnet20.safetensors" "$work/unreadable.safetensors" && chmod 000 "$work/unreadable.safetensors"
  expect_error "evaluate: unreadable weights" "unreadable.safetensors" "$ex/evaluate" --arch resnet20 --weights "$work/unreadable.safetensors" --data "$work/cifar"
  expect_error "predict: an unreadable image" "unreadable.safetensors" "$ex/predict" "${W20[@]}" --image "$work/unreadable.safetensors"
else
  echo "skip unreadable files: running as root"
fi
expect_error "evaluate: random bytes as weights" "random.pt" "$ex/evaluate" --arch resnet20 --weights "$work/random.pt" --data "$work/cifar"
expect_error "evaluate: truncated safetensors" "truncated.safetensors" "$ex/evaluate" --arch resnet20 --weights "$work/truncated.safetensors" --data "$work/cifar"
expect_error "evaluate: resnet18 weights for resnet20" "resnet18.safetensors" "$ex/evaluate" --arch resnet20 --weights "$work/resnet18.safetensors" --data "$work/cifar"
expect_error "evaluate: missing data" "none" "$ex/evaluate" "${W20[@]}" --data "$work/none"
expect_error "evaluate: empty folder" "empty_dir" "$ex/evaluate" "${W20[@]}" --data "$work/empty_dir"
expect_error "evaluate: empty CIFAR file" "test_batch.bin" "$ex/evaluate" "${W20[@]}" --data "$work/empty_cifar"
expect_error "evaluate: empty shard" "empty.tar" "$ex/evaluate" "${W20[@]}" --data "$work/empty.tar"
expect_error "evaluate: a shard corrupted mid-epoch" "corrupt.tar: s06" "$ex/evaluate" "${W20[@]}" --data "$work/corrupt.tar" --batch 4 --workers 1
expect_error "evaluate: a truncated shard" "truncated.tar" "$ex/evaluate" "${W20[@]}" --data "$work/truncated.tar" --batch 4
expect_error "evaluate: a label outside the classes (CIFAR)" "label byte 12" "$ex/evaluate" "${W20[@]}" --data "$work/cifar_label"
expect_error "evaluate: a label outside the classes (WebDataset)" "label 15" "$ex/evaluate" "${W20[@]}" --data "$work/label15.tar" --batch 4
expect_success "evaluate: the intact shard" "$ex/evaluate" "${W20[@]}" --data "$work/shard.tar" --batch 4
expect_success "evaluate: 1 x 1 and 50,000 x 2 images" "$ex/evaluate" "${W20[@]}" --data "$work/folder" --batch 2

# ---- predict ------------------------------------------------------------------------------
expect_success "predict: a 1 x 1 image" "$ex/predict" "${W20[@]}" --image "$work/tiny.png"
expect_success "predict: a 50,000 x 2 image" "$ex/predict" "${W20[@]}" --image "$work/wide.png"
expect_error "predict: random bytes as an image" "random.pt" "$ex/predict" "${W20[@]}" --image "$work/random.pt"
expect_error "predict: resnet18 weights for resnet20" "resnet18.safetensors" "$ex/predict" --arch resnet20 --weights "$work/resnet18.safetensors" --image "$work/photo.png"
expect_error "predict: an empty classes file" "classes" "$ex/predict" "${W20[@]}" --image "$work/photo.png" --classes "$work/empty.tar"

# ---- bcosify_resnet -------------------------------------------------------------------------
B=("$ex/bcosify_resnet" "${W20[@]}" --test-data "$work/cifar" --epochs 1 --workers 1 --gridpg-grids 0
   --explain 0 --no-original-gridpg --photos "")
expect_error "bcosify_resnet: missing weights" "does not exist" "$ex/bcosify_resnet" --weights "$work/none.pt" --data "$work/cifar" --out "$work/b0"
expect_error "bcosify_resnet: resnet18 weights for resnet20" "resnet18.safetensors" "$ex/bcosify_resnet" --weights "$work/resnet18.safetensors" --data "$work/cifar" --test-data "$work/cifar" --out "$work/b0"
expect_error "bcosify_resnet: empty training folder" "empty_dir" "${B[@]}" --data "$work/empty_dir" --out "$work/b1"
expect_error "bcosify_resnet: fewer samples than a batch" "than one batch" "${B[@]}" --data "$work/shard.tar" --batch 64 --out "$work/b1"
expect_error "bcosify_resnet: a training shard corrupted mid-epoch" "corrupt.tar: s06" "${B[@]}" --data "$work/corrupt.tar" --batch 4 --out "$work/b2"
expect_error "bcosify_resnet: a training label outside the classes (CIFAR)" "label byte 12" "${B[@]}" --data "$work/cifar_label" --batch 16 --out "$work/b3"
expect_error "bcosify_resnet: a training label outside the classes (WebDataset)" "s04 has label 15" "${B[@]}" --data "$work/label15.tar" --batch 4 --out "$work/b3"
expect_error "bcosify_resnet: a test label outside the classes (WebDataset)" "s04 has label 15" "$ex/bcosify_resnet" "${W20[@]}" --data "$work/cifar" --test-data "$work/label15.tar" --out "$work/b3"
expect_error "bcosify_resnet: --resume without a checkpoint" "no checkpoint" "${B[@]}" --data "$work/cifar" --batch 16 --out "$work/b4" --resume
expect_error "bcosify_resnet: an unknown --autocast" "--autocast: fp8 not in" "${B[@]}" --data "$work/cifar" --autocast fp8 --out "$work/b5"
# the option checks of examples/cli.cpp: a message that names the option and the value
expect_error "bcosify_resnet: --workers 0" "--workers: Value 0 is not positive" "${B[@]}" --data "$work/cifar" --workers 0 --out "$work/b5"
expect_error "bcosify_resnet: --epochs -1" "--epochs: Value -1 is negative" "${B[@]}" --data "$work/cifar" --epochs -1 --out "$work/b5"
expect_error "bcosify_resnet: --epochs nan" "--epochs: Value nan is not a number" "${B[@]}" --data "$work/cifar" --epochs nan --out "$work/b5"
expect_success "bcosify_resnet: --autocast f16 (loss scaling) fine-tunes" "${B[@]}" --data "$work/cifar" --batch 16 --autocast f16 --out "$work/b6"
cp "$work/random.pt" "$work/b4/checkpoint.safetensors" 2>/dev/null || { mkdir -p "$work/b4"; cp "$work/random.pt" "$work/b4/checkpoint.safetensors"; }
expect_error "bcosify_resnet: --resume from a corrupt checkpoint" "checkpoint.safetensors" "${B[@]}" --data "$work/cifar" --batch 16 --out "$work/b4" --resume

# Disk full: --out on a 1.5 MB tmpfs (the checkpoint needs ~3.3 MB). Needs mount rights (root,
# or a user namespace); skipped otherwise.
mkdir -p "$work/full"
if mount -t tmpfs -o size=1536k tmpfs "$work/full" 2>/dev/null; then
  expect_error "bcosify_resnet: disk full while saving" "No space left on device" "${B[@]}" --data "$work/cifar" --batch 16 --out "$work/full/run"
  leftovers=$(find "$work/full" -name '*.tmp.*' | wc -l)
  if [[ $leftovers -eq 0 ]]; then ok "... no temporary file is left on the full disk"; else bad "... $leftovers temporary files left"; fi
  if [[ ! -e "$work/full/run/checkpoint.safetensors" ]]; then ok "... and no half-written checkpoint"; else bad "... a checkpoint was written"; fi
  umount "$work/full"
else
  echo "skip disk full: cannot mount a tmpfs here (not root)"
fi

# ---- border_probe -------------------------------------------------------------------------
expect_error "border_probe: missing model" "does not exist" "$ex/border_probe" --model "$work/none.safetensors" --test-data "$work/cifar"
expect_error "border_probe: a standard ResNet instead of a B-cos one" "resnet20.safetensors" "$ex/border_probe" --model "$work/resnet20.safetensors" --test-data "$work/cifar"

# ---- clip, train_clip, bcos_clip_zeroshot ----------------------------------------------------
expect_error "clip embed: random bytes as a CLIP" "random.pt" "$ex/clip" embed --clip "$work/random.pt" --image "$work/photo.png"
expect_error "clip embed: a ResNet checkpoint as a CLIP" "resnet20.safetensors" "$ex/clip" embed --clip "$work/resnet20.safetensors" --image "$work/photo.png"
expect_error "clip tokenize: missing vocabulary" "none.txt.gz" "$ex/clip" tokenize --vocab "$work/none.txt.gz" "a cat"
expect_error "clip tokenize: random bytes as the vocabulary" "random.pt" "$ex/clip" tokenize --vocab "$work/random.pt" "a cat"
expect_error "train_clip: missing vocabulary" "none.txt.gz" "$ex/train_clip" --vocab "$work/none.txt.gz" --out "$work/t0"
expect_error "bcos_clip_zeroshot: a missing teacher" "none.pt does not exist" "$ex/bcos_clip_zeroshot" --clip "$work/none.pt" --out "$work/z0"
expect_error "train_clip: --data missing" "none.tar" "$ex/train_clip" --data "$work/none.tar" --out "$work/t0"
expect_error "train_clip: --cuda-graph on the CPU" "--cuda-graph needs --device cuda" "$ex/train_clip" --cuda-graph --out "$work/z0"
expect_error "bcosify_resnet: --cuda-graph on the CPU" "--cuda-graph needs --device cuda" "$ex/bcosify_resnet" --cuda-graph --out "$work/z0"
expect_error "bcos_clip_zeroshot: --cuda-graph on the CPU" "--cuda-graph needs --device cuda" "$ex/bcos_clip_zeroshot" --cuda-graph --out "$work/z0"
expect_error "bcos_clip_zeroshot: --test-data missing" "none.tar" "$ex/bcos_clip_zeroshot" --test-data "$work/none.tar" --out "$work/z0"
if [[ -f "$vocab" ]]; then
  T=("$ex/train_clip" --vocab "$vocab" --epochs 1 --batch 4 --test-data "" --vision-width 8 --vision-layers 1,1
     --embed-dim 32 --text-width 32 --text-layers 1 --text-heads 1 --context-length 16 --warmup 1 --captions-from-classes)
  expect_error "train_clip: an empty training folder" "empty_dir" "${T[@]}" --data "$work/empty_dir" --out "$work/t1"
  expect_error "train_clip: a training shard corrupted mid-epoch" "corrupt.tar: s06" "${T[@]}" --data "$work/corrupt.tar" --out "$work/t2"
  expect_error "train_clip: a label outside the classes" "label byte 12" "${T[@]}" --data "$work/cifar_label" --out "$work/t3"
  expect_success "train_clip: a tiny CLIP on the synthetic CIFAR-10" "${T[@]}" --data "$work/cifar" --out "$work/t4"
  tiny="$work/t4/clip.safetensors"
  expect_success "clip embed: 1 x 1 and 50,000 x 2 images" "$ex/clip" embed --clip "$tiny" --image "$work/tiny.png" --image "$work/wide.png"
  expect_error "clip zeroshot: an empty folder" "empty_dir" "$ex/clip" zeroshot --clip "$tiny" --vocab "$vocab" --data "$work/empty_dir"
  expect_error "clip zeroshot: a shard corrupted mid-epoch" "corrupt.tar: s06" "$ex/clip" zeroshot --clip "$tiny" --vocab "$vocab" --data "$work/corrupt.tar" --batch 4 --workers 1
  Z=("$ex/bcos_clip_zeroshot" --clip "$tiny" --vocab "$vocab" --epochs 1 --batch 4 --grids 0 --photos "" --workers 1)
  expect_error "bcos_clip_zeroshot: random bytes as the teacher" "random.pt" "$ex/bcos_clip_zeroshot" --clip "$work/random.pt" --vocab "$vocab" --data "$work/cifar" --test-data "$work/cifar" --out "$work/z0"
  expect_error "train_clip: a class label outside the class names (WebDataset)" "15" "${T[@]}" --data "$work/label15.tar" --out "$work/t5"
  expect_error "bcos_clip_zeroshot: a test label outside the classes (WebDataset)" "s04 has label 15" "${Z[@]}" --data "$work/cifar" --test-data "$work/label15.tar" --limit-train 8 --out "$work/z4"
  expect_error "clip zeroshot: a label outside the classes (WebDataset)" "15" "$ex/clip" zeroshot --clip "$tiny" --vocab "$vocab" --data "$work/label15.tar" --batch 4
  expect_error "bcos_clip_zeroshot: an empty training folder" "empty_dir" "${Z[@]}" --data "$work/empty_dir" --test-data "$work/cifar" --out "$work/z1"
  expect_error "bcos_clip_zeroshot: a training shard corrupted mid-epoch" "corrupt.tar: s06" "${Z[@]}" --data "$work/corrupt.tar" --test-data "$work/cifar" --out "$work/z2"
  expect_error "bcos_clip_zeroshot: a test label outside the classes" "label byte 12" "${Z[@]}" --data "$work/cifar" --test-data "$work/cifar_label" --limit-train 8 --out "$work/z3"
else
  echo "skip the CLIP steps that need $vocab (set BCOS_DATA)"
fi

echo "$failures failure(s)"
[[ $failures -eq 0 ]]
