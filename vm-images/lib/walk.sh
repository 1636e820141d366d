# vhe_walk DIR LEVEL: a sorted manifest of the tree under DIR (busybox sh; the host runs it with the
# same busybox as the guest, so both sides format every line alike). lost+found and DIR itself are
# left out. Lines:
#   meta TYPE|MODE|UID:GID|NLINK|SIZE|MTIME|NAME[ -> TARGET]
#   data NAME  SHA256          (one per regular file)
# LEVEL 2: everything above (directory nlink, size and mtime and symlink/fifo times are left blank:
#          they depend on the file system that holds the tree, not on the data);
# LEVEL 1: no mtimes (for trees that were just written to);
# LEVEL 0: content only: no mtimes, owners or link counts, no fifos (for a debugfs rdump copy).
vhe_walk() {
    (
        cd "$1" || exit 1
        find . ! -path . ! -path ./lost+found ! -path './lost+found/*' \
            -exec stat -c '%F|%a|%u:%g|%h|%s|%Y|%N' {} + \
            | awk -F'|' -v lvl="$2" '{
                t = $1; mode = $2; own = $3; nl = $4; sz = $5; mt = $6; n = $7
                for (i = 8; i <= NF; i++) n = n "|" $i
                if (t == "directory") { nl = ""; sz = ""; mt = "" }
                else if (t == "symbolic link") { nl = ""; mt = "" }
                else if (t !~ /^regular/) { if (lvl == 0) next; nl = ""; mt = "" }
                if (lvl < 2) mt = ""
                if (lvl < 1) { nl = ""; own = "" }
                print "meta " t "|" mode "|" own "|" nl "|" sz "|" mt "|" n
            }'
        find . ! -path ./lost+found ! -path './lost+found/*' -type f -exec sha256sum {} + \
            | sed 's/^\([0-9a-f]\{64\}\)  \(.*\)$/data \2  \1/'
    ) | LC_ALL=C sort
}
