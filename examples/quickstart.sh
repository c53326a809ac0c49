#!/usr/bin/env bash
# The main job on a small example: build a root filesystem, commit it as an image, change it,
# commit the change as a second layer, then show the history and the digests.
# Everything goes to a scratch directory; the images land in a scratch store.
set -euo pipefail

work=$(mktemp -d "${TMPDIR:-/tmp}/layerdiff-example.XXXXXX")
export LAYERDIFF_HOME="$work/home"
echo "working in $work"

# 1. A small root filesystem, made on the fly.
rootfs="$work/rootfs"
mkdir -p "$rootfs"/{bin,etc,usr/share/doc,var/log,tmp}
chmod 1777 "$rootfs/tmp"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$rootfs/etc/passwd"
printf 'example\n' >"$rootfs/etc/hostname"
printf '#!/bin/sh\necho hello from the example image\n' >"$rootfs/bin/hello"
chmod 755 "$rootfs/bin/hello"
ln -s hello "$rootfs/bin/greet"
head -c 1000000 /dev/urandom >"$rootfs/usr/share/doc/blob.bin"

layerdiff commit --upper "$rootfs" -m "base rootfs" example:v1

# 2. Change it: edit, add, delete; keep the old tree to diff against.
cp -a "$rootfs" "$work/lower"
printf 'changed\n' >"$rootfs/etc/hostname"
printf 'log line\n' >"$rootfs/var/log/app.log"
rm -r "$rootfs/usr/share/doc"

echo "--- changes"
layerdiff diff "$work/lower" "$rootfs"

layerdiff commit --lower "$work/lower" --upper "$rootfs" --from example:v1 \
    -m "second layer" -c 'CMD ["/bin/hello"]' example:v2 --json

echo "--- history of example:v2"
layerdiff history example:v2
echo "--- images"
layerdiff images
