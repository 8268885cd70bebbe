#!/bin/bash
# Run from a directory holding base.img (truncate -s 64M base.img; mkfs.ext4 -q -F base.img);
# needs qemu-utils and nbdkit. Its figures are in ARCHITECTURE.md (nbd/, "Why our own").
# Per state: what serving one crash state costs with qemu-nbd (a qcow2 overlay
# on the base, the state's writes into it, the server started, one read by a
# client, stopped) and with nbdkit's cow filter; 40 states each, alternately.
N=40
qemu_state() {
  qemu-img create -q -f qcow2 -b base.img -F raw ov.qcow2
  qemu-io -f qcow2 -c 'write -P 0x5a 1M 64k' -c 'write -P 0x33 8M 4k' ov.qcow2 >/dev/null
  qemu-nbd --fork -k $PWD/q.sock -f qcow2 ov.qcow2
  qemu-io -f raw -r -c 'read 0 4k' "nbd+unix:///?socket=$PWD/q.sock" >/dev/null
  rm -f ov.qcow2
}
nbdkit_state() {
  nbdkit --exit-with-parent -U $PWD/k.sock --filter=cow file base.img & pid=$!
  while [ ! -S k.sock ]; do sleep 0.001; done
  qemu-io -f raw -c 'write -P 0x5a 1M 64k' -c 'write -P 0x33 8M 4k' -c 'read 0 4k' "nbd+unix:///?socket=$PWD/k.sock" >/dev/null
  kill $pid; wait $pid 2>/dev/null; rm -f k.sock
}
for r in 1 2; do
  s=$(date +%s%N); for i in $(seq $N); do qemu_state; done; e=$(date +%s%N); echo "qemu-nbd round $r: $(( (e-s)/N/1000000 )) ms per state"
  s=$(date +%s%N); for i in $(seq $N); do nbdkit_state; done; e=$(date +%s%N); echo "nbdkit cow round $r: $(( (e-s)/N/1000000 )) ms per state"
done
