#!/usr/bin/env bash
# scripts/get_data offline: its layout, checksum and failure handling on files this test writes,
# served through file:// URLs from a manifest (BCOS_GET_DATA_MANIFEST), plus the one-line error
# when nothing can be downloaded.   usage: test_get_data.sh PATH/TO/get_data
set -uo pipefail
get_data=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
source "$(dirname "${BASH_SOURCE[0]}")/checks.sh"
run() {  # run MANIFEST: get_data with a fresh environment; output in $work/out, $work/err
  BCOS_CACHE="$work/cache" BCOS_GET_DATA_MANIFEST="$1" "$get_data" >"$work/out" 2>"$work/err"
}

# A small CIFAR-10 binary archive: two 3,073-byte records a file.
mkdir -p "$work/src/cifar-10-batches-bin"
for f in data_batch_1 data_batch_2 data_batch_3 data_batch_4 data_batch_5 test_batch; do
  head -c $((2 * 3073)) /dev/urandom > "$work/src/cifar-10-batches-bin/$f.bin"
done
printf 'airplane\nautomobile\n' > "$work/src/cifar-10-batches-bin/batches.meta.txt"
tar -czf "$work/cifar.tar.gz" -C "$work/src" cifar-10-batches-bin
cifar_md5=$(md5sum "$work/cifar.tar.gz" | cut -d' ' -f1)
# A "checkpoint" whose name carries its sha256 prefix, as the published ones do.
head -c 5000 /dev/urandom > "$work/weights.bin"
w_sha=$(sha256sum "$work/weights.bin" | cut -d' ' -f1)
w_name="resnet20-${w_sha:0:8}.th"
cp "$work/weights.bin" "$work/$w_name"

good="$work/good.manifest"
cat > "$good" <<EOF
# a comment line
cifar file://$work/cifar.tar.gz md5 $cifar_md5 data/cifar10
file file://$work/$w_name sha256 $w_sha weights/resnet-cifar10/$w_name
EOF

run "$good"
check "a good manifest installs everything (exit 0)" test $? -eq 0
check "CIFAR-10 lands where the examples look" cmp -s "$work/src/cifar-10-batches-bin/test_batch.bin" \
  "$work/cache/data/cifar10/cifar-10-batches-bin/test_batch.bin"
check "all six batches and the meta file" test "$(ls "$work/cache/data/cifar10/cifar-10-batches-bin" | wc -l)" -eq 7
check "the weights land under weights/resnet-cifar10" cmp -s "$work/weights.bin" "$work/cache/weights/resnet-cifar10/$w_name"
check "the last line of the output is the cache folder" test "$(tail -n 1 "$work/out")" == "$work/cache"
check "no temporary files are left" test -z "$(find "$work/cache" -name '*.part*' -o -name '.get_data.*')"
check "--where prints the cache folder" test "$(BCOS_CACHE="$work/cache" "$get_data" --where)" == "$work/cache"

# Verified files are not fetched again: the sources may be gone.
mv "$work/cifar.tar.gz" "$work/cifar.moved"
mv "$work/$w_name" "$work/w.moved"
run "$good"
check "a second run finds everything there (exit 0)" test $? -eq 0
check "... and says so" test "$(grep -c ': there' "$work/out")" -eq 2
mv "$work/cifar.moved" "$work/cifar.tar.gz"
mv "$work/w.moved" "$work/$w_name"

# A corrupted installed file is noticed and replaced.
echo garbage > "$work/cache/weights/resnet-cifar10/$w_name"
run "$good"
check "a corrupted installed checkpoint is downloaded again" cmp -s "$work/weights.bin" \
  "$work/cache/weights/resnet-cifar10/$w_name"

# Wrong checksums: an error naming both sums, and nothing installed.
rm -rf "$work/cache"
sed "s/$cifar_md5/00000000000000000000000000000000/" "$good" > "$work/bad_md5.manifest"
run "$work/bad_md5.manifest"
check "a wrong md5 fails" test $? -ne 0
check "... with both sums in the message" grep -q "md5 checksum $cifar_md5, expected 00000000000000000000000000000000" "$work/err"
check "... and installs nothing" test ! -e "$work/cache/data/cifar10"
check "... nor leaves temporaries" test -z "$(find "$work/cache" -name '.get_data.*')"
other=$(printf '%064d' 0)
printf 'file file://%s sha256 %s weights/resnet-cifar10/resnet20-00000000.th\n' "$work/$w_name" "$other" > "$work/bad_sha.manifest"
run "$work/bad_sha.manifest"
check "a wrong sha256 fails" test $? -ne 0
check "... and leaves no partial file" test -z "$(ls "$work/cache/weights/resnet-cifar10" 2>/dev/null)"
printf 'file file://%s sha256 %s weights/resnet-cifar10/resnet20-deadbeef.th\n' "$work/$w_name" "$w_sha" > "$work/bad_name.manifest"
run "$work/bad_name.manifest"
check "a name whose sha256 prefix disagrees with the list fails" grep -q "its name says sha256 deadbeef" "$work/err"

# An archive without CIFAR-10 inside.
tar -czf "$work/other.tar.gz" -C "$work" weights.bin
printf 'cifar file://%s/other.tar.gz md5 %s data/cifar10\n' "$work" "$(md5sum "$work/other.tar.gz" | cut -d' ' -f1)" \
  > "$work/not_cifar.manifest"
run "$work/not_cifar.manifest"
check "an archive without cifar-10-batches-bin/ fails clearly" grep -q "not a CIFAR-10 binary archive" "$work/err"

# No network: one clear line, exit 1.
printf 'file http://127.0.0.1:9/resnet20-%s.th sha256 %s weights/resnet-cifar10/resnet20-%s.th\n' \
  "${w_sha:0:8}" "$w_sha" "${w_sha:0:8}" > "$work/offline.manifest"
run "$work/offline.manifest"
check "an unreachable server fails with exit 1" test $? -eq 1
check "... and exactly one line on stderr" test "$(wc -l < "$work/err")" -eq 1
check "... that says it cannot download" grep -q "^get_data: cannot download http://127.0.0.1:9/" "$work/err"

printf 'file file:///x sha256 %s ../escape\n' "$w_sha" > "$work/escape.manifest"
run "$work/escape.manifest"
check "a destination outside the cache is refused" grep -q "bad manifest line" "$work/err"

echo "$failures failure(s)"
[[ $failures -eq 0 ]]
