//! Through a real host mount: reads move atime as the mount's atime option says although the
//! kernel serves them from its page cache (fstests generic/003), and an unprivileged write or
//! fallocate drops setuid and setgid exactly as on the kernel's ext4 (generic/683 to 685).

mod common;

use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn mkfs(img: &Path) {
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-b", "4096"])
        .arg(img)
        .arg("64M"));
}

fn atime(p: &Path) -> (i64, i64) {
    let m = std::fs::metadata(p).unwrap();
    (m.atime(), m.atime_nsec())
}

fn mtime(p: &Path) -> (i64, i64) {
    let m = std::fs::metadata(p).unwrap();
    (m.mtime(), m.mtime_nsec())
}

fn read(p: &Path) {
    assert_eq!(std::fs::read(p).unwrap(), b"aaa\n");
}

fn pause() {
    std::thread::sleep(Duration::from_millis(30));
}

/// `mount -o remount,...` as mount(8) does it for a FUSE mount (-i: no helper); then a moment
/// for the daemon to see the new flags.
fn remount(mnt: &Path, opts: &str) {
    run(Command::new("mount").args(["-i", "-o", opts]).arg(mnt));
    std::thread::sleep(Duration::from_millis(200));
}

#[test]
fn reads_move_atime_by_the_mount_option() {
    require_root_and_tools();
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("img");
    mkfs(&img);
    let mnt = work.path().join("m");
    let f = mnt.join("f");
    let d = mnt.join("d");

    // strictatime: every read moves atime, though the data stays in the kernel's page cache.
    let m = Mount::start(&img, &mnt, &["-o", "strictatime"]);
    std::fs::write(&f, b"aaa\n").unwrap();
    std::fs::create_dir(&d).unwrap();
    let mut last = atime(&f);
    for i in 0..3 {
        pause();
        read(&f);
        let now = atime(&f);
        assert!(
            now > last,
            "strictatime read {i}: atime {now:?} after {last:?}"
        );
        last = now;
    }
    // A remount changes the mount's flags without telling the daemon; it follows them.
    remount(&mnt, "remount,ro");
    read(&f);
    assert_eq!(atime(&f), last, "remounted read-only");
    remount(&mnt, "remount,rw");
    read(&f);
    let now = atime(&f);
    assert!(now > last, "remounted rw, strictatime again");
    remount(&mnt, "remount,noatime");
    read(&f);
    assert_eq!(atime(&f), now, "remounted noatime");
    remount(&mnt, "remount,strictatime");
    read(&f);
    last = atime(&f);
    assert!(last > now, "remounted strictatime");
    let stderr = m.unmount();
    assert!(!stderr.contains("panicked"), "{stderr}");

    // relatime (the default): atime is newer than mtime, so reads leave it until a write.
    let m = Mount::start(&img, &mnt, &[]);
    read(&f);
    assert_eq!(atime(&f), last, "relatime: atime already past mtime");
    pause();
    std::fs::write(&f, b"aaa\n").unwrap();
    assert!(mtime(&f) > last);
    pause();
    read(&f);
    let after_write = atime(&f);
    assert!(
        after_write > mtime(&f),
        "relatime: the read after a write moves atime"
    );
    pause();
    read(&f);
    assert_eq!(atime(&f), after_write);
    // Listing a directory changed since its last access moves its atime.
    std::fs::write(d.join("x"), b"").unwrap();
    let dir_before = atime(&d);
    pause();
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
    assert!(
        atime(&d) > dir_before,
        "relatime: listing a changed directory"
    );
    m.unmount();

    // noatime and nodiratime.
    let m = Mount::start(&img, &mnt, &["-o", "noatime"]);
    std::fs::write(&f, b"aaa\n").unwrap();
    pause();
    read(&f);
    assert_eq!(atime(&f), after_write, "noatime");
    m.unmount();
    let m = Mount::start(&img, &mnt, &["-o", "nodiratime"]);
    std::fs::write(d.join("y"), b"").unwrap();
    let dir_before = atime(&d);
    pause();
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 2);
    assert_eq!(atime(&d), dir_before, "nodiratime");
    read(&f);
    let last = atime(&f);
    assert!(last > after_write, "nodiratime leaves files to relatime");
    m.unmount();

    // ro: never.
    let m = Mount::start(&img, &mnt, &["-o", "ro,strictatime"]);
    pause();
    read(&f);
    assert_eq!(atime(&f), last, "read-only");
    m.unmount();
    assert_fsck_clean(&img);
    // The kernel's ext4 reads back the atime we stored.
    let back = KernelMount::start(&img, &work.path().join("kro"));
    assert_eq!(atime(&back.dir.join("f")), last);
    back.unmount();
}

/// What each unprivileged change leaves of setuid/setgid: (file mode before, who, what) →
/// mode after, for a file owned by root:root.
fn setid_scenario(dir: &Path) -> Vec<String> {
    let who = [("nobody", 65534, 65534), ("group member", 65534, 0)];
    let changes: [(&str, &[&str]); 3] = [
        ("fallocate", &["fallocate", "-o", "65536", "-l", "65536"]),
        ("punch", &["fallocate", "-p", "-o", "0", "-l", "4096"]),
        (
            "write",
            &[
                "dd",
                "if=/dev/zero",
                "bs=1",
                "count=1",
                "seek=100",
                "conv=notrunc",
                "status=none",
            ],
        ),
    ];
    let mut out = Vec::new();
    for mode in [0o6666, 0o6676, 0o6766, 0o2676, 0o6777] {
        for (name, uid, gid) in who {
            for (what, cmd) in changes {
                let f = dir.join("f");
                let _ = std::fs::remove_file(&f);
                std::fs::write(&f, vec![b'X'; 192 * 1024]).unwrap();
                std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
                let target = format!("of={}", f.display());
                let mut c = Command::new(cmd[0]);
                if cmd[0] == "dd" {
                    c.args(&cmd[1..]).arg(&target);
                } else {
                    c.args(&cmd[1..]).arg(&f);
                }
                let st = c.uid(uid).gid(gid).status().unwrap();
                assert!(st.success(), "{what} as {name} on {mode:o}: {st}");
                let after = std::fs::metadata(&f).unwrap().mode() & 0o7777;
                out.push(format!("{mode:o} {name} {what}: {after:o}"));
            }
        }
    }
    out
}

#[test]
fn unprivileged_changes_drop_setid_bits_as_ext4_does() {
    require_root_and_tools();
    let work = tempfile::tempdir().unwrap();
    // The unprivileged callers must reach the mount points.
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ours = work.path().join("ours.img");
    let theirs = work.path().join("kernel.img");
    mkfs(&ours);
    mkfs(&theirs);
    let kdir = work.path().join("k");
    std::fs::create_dir_all(&kdir).unwrap();
    mount_loop(&theirs, &kdir, "loop");
    let expect = setid_scenario(&kdir);
    run(Command::new("umount").arg(&kdir));
    // The reference really drops bits (a non-member loses setgid of a non-group-exec file).
    assert!(
        expect.contains(&"6666 nobody fallocate: 666".to_string()),
        "{expect:#?}"
    );
    let mnt = work.path().join("m");
    let m = Mount::start(&ours, &mnt, &[]);
    let got = setid_scenario(&mnt);
    let stderr = m.unmount();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_fsck_clean(&ours);
    let diff: Vec<_> = expect
        .iter()
        .zip(&got)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("kernel {a} / ours {b}"))
        .collect();
    assert!(diff.is_empty(), "{diff:#?}");
}
