# vhe_write_workload: a deterministic set of changes to the tree that guest-test.sh builds, run in
# the tree's top directory (busybox sh; in the guest on /mnt, on the host on a copy of the tree to
# get the expected result). Exits non-zero at the first failing step; each step is traced on stderr
# (set -x), so the last trace line names the step that failed.
vhe_write_workload() (
    set -ex
    mkdir -p new/sub/deeper
    seq 1 200000 >new/big.txt
    i=0
    while [ $i -lt 40 ]; do echo "small file $i" >new/sub/s$i; i=$((i + 1)); done
    echo deep >new/sub/deeper/leaf
    # a sparse file: 3 blocks at 1.2 MiB, a hole before them
    dd if=new/big.txt of=new/sparse bs=4096 seek=300 count=3 conv=notrunc 2>/dev/null
    echo appended >>data/small.txt
    printf XYZ | dd of=data/rand-1m bs=1 seek=5000 conv=notrunc 2>/dev/null
    printf 'overwrite across a block boundary' | dd of=data/4097 bs=1 seek=4090 conv=notrunc 2>/dev/null
    truncate -s 1000 data/rand-3m
    truncate -s 100000 data/empty
    mv data/4096 data/renamed-4096
    mv dir1 dir1-renamed
    rm -f bigdir/f1*
    rmdir emptydir
    ln -s ../new/big.txt links/to-new
    ln new/big.txt new/big-hardlink
    chmod 600 data/small.txt
    echo "new file" >"names/with space/new file"
    rm data/hard2
    # file data at many sizes: empty, unaligned, ~20 MiB, with overwrites (fsynced) inside it
    : >new/zero-length
    dd if=new/big.txt of=new/unaligned bs=1000 count=777 conv=fsync 2>/dev/null
    seq 1 3000000 >new/huge.txt
    dd if=new/big.txt of=new/huge.txt bs=4096 seek=1000 count=50 conv=notrunc,fsync 2>/dev/null
    for off in 7 123457 5000001 9999999 17000003; do
        printf 'overwrite-%s' $off | dd of=new/huge.txt bs=1 seek=$off conv=notrunc,fsync 2>/dev/null
    done
    dd if=new/huge.txt of=new/copy-tail bs=65536 skip=100 count=40 2>/dev/null
    truncate -s 3333333 new/copy-tail
    sync
)
