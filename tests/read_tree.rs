//! Read-path integration tests: generated trees are put into ext4 images of many formats (by
//! mke2fs -d, or by the Linux kernel itself), served by `vhost-ext4 mount`, and compared with
//! both the source tree and the kernel's own read-only mount of the same image.

mod common;

use common::*;

/// One variant end to end: tree → image → kernel mount + our read-only mount → compare →
/// unmount → e2fsck. With `default_mount_too`, the image is then served once more without
/// --read-only (as a user would run it), read, unmounted, and e2fsck'd again.
fn read_variant(v: Variant, spec: TreeSpec, mount_args: &[&str], default_mount_too: bool) {
    require_root_and_tools();
    let mut t = Timer::new(v.name);
    let tmp = tempfile::Builder::new()
        .prefix(&format!("vhe-read-{}-", v.name))
        .tempdir_in("/tmp")
        .unwrap();
    let work = tmp.path();
    let src = work.join("src");
    generate_tree(&src, &spec);
    t.lap("generate tree");
    let image = make_image(work, &src, &v);
    t.lap(if v.kernel_written {
        "image written by the kernel"
    } else {
        "mke2fs -d"
    });

    let kernel = KernelMount::start(&image, &work.join("kernel"));
    let mut args = vec!["--read-only"];
    args.extend_from_slice(mount_args);
    let ours = Mount::start(&image, &work.join("ours"), &args);
    t.lap("mounts up");

    let truth = if v.kernel_written {
        Truth::CopiedSource
    } else {
        Truth::MkfsSource
    };
    // The harness checks itself: the kernel must agree with the source first.
    let harness = compare_trees(&src, &kernel.dir, truth);
    t.lap("source vs kernel (harness check)");
    let vs_source = compare_trees(&src, &ours.dir, truth);
    t.lap("source vs ours");
    let vs_kernel = compare_trees(&kernel.dir, &ours.dir, Truth::Kernel);
    t.lap("kernel vs ours");
    let statfs = compare_statfs(&kernel.dir, &ours.dir);
    let writable = writes_not_refused(&ours.dir, "files/size-4096", "empty-dir");
    t.lap("statfs, EROFS");

    let stderr = ours.unmount();
    kernel.unmount();
    t.lap("unmount");
    assert_fsck_clean(&image);
    t.lap("e2fsck -fn");

    harness.assert_clean(&format!(
        "[{}] harness: the kernel's mount differs from the source tree (test bug or tool change)",
        v.name
    ));
    vs_source.assert_clean(&format!("[{}] vhost-ext4 mount vs the source tree", v.name));
    vs_kernel.assert_clean(&format!(
        "[{}] vhost-ext4 mount vs the kernel's ext4",
        v.name
    ));
    assert!(
        statfs.is_empty(),
        "[{}] statfs differs:\n  {}",
        v.name,
        statfs.join("\n  ")
    );
    assert!(
        writable.is_empty(),
        "[{}] writes through the --read-only mount were not refused with EROFS:\n  {}",
        v.name,
        writable.join("\n  ")
    );
    eprintln!(
        "[{}] compared {} entries, {} MiB; daemon stderr: {} bytes",
        v.name,
        vs_kernel.entries,
        vs_kernel.bytes / MIB,
        stderr.len()
    );

    if default_mount_too {
        let ours = Mount::start(&image, &work.join("ours-default"), mount_args);
        let again = compare_trees(&src, &ours.dir, truth);
        ours.unmount();
        t.lap("default (read-write) mount: source vs ours");
        assert_fsck_clean(&image);
        again.assert_clean(&format!(
            "[{}] vhost-ext4 mount without --read-only vs the source tree",
            v.name
        ));
    }
    if std::env::var_os("VHE_KEEP_WORK").is_some() {
        eprintln!("[{}] keeping {}", v.name, tmp.keep().display());
    }
}

fn spec(block_size: u32, big_dir_entries: usize) -> TreeSpec {
    TreeSpec {
        block_size,
        big_dir_entries,
        huge_file: false,
        tiny_things: false,
        wide_times: true,
        trailing_holes: true,
    }
}

/// mke2fs's ext4 defaults (64bit, metadata_csum, flex_bg, extents, huge_file, dir_nlink,
/// extra_isize), 4 KiB blocks, a 100 MiB file and a 20,000-entry htree directory; then served
/// once more without --read-only, read back, and e2fsck'd.
#[test]
fn ext4_4k_64bit_csum() {
    let mut s = spec(4096, 20_000);
    s.huge_file = true;
    read_variant(Variant::ext4("ext4-4k", 4096), s, &[], true);
}

/// 1 KiB blocks: a 20,000-entry directory needs a two-level htree.
#[test]
fn ext4_1k_64bit_csum() {
    read_variant(
        Variant::ext4("ext4-1k", 1024),
        spec(1024, 20_000),
        &[],
        false,
    );
}

#[test]
fn ext4_4k_no64bit_nocsum() {
    let mut v = Variant::ext4("ext4-4k-no64bit-nocsum", 4096);
    v.features = Some("^64bit,^metadata_csum");
    read_variant(v, spec(4096, 3_000), &["--threads", "4"], false);
}

#[test]
fn ext4_4k_64bit_nocsum() {
    let mut v = Variant::ext4("ext4-4k-nocsum", 4096);
    v.features = Some("^metadata_csum");
    read_variant(v, spec(4096, 3_000), &[], false);
}

/// 1 KiB blocks, 32-bit, with checksums.
#[test]
fn ext4_1k_no64bit_csum() {
    let mut v = Variant::ext4("ext4-1k-no64bit", 1024);
    v.features = Some("^64bit");
    read_variant(v, spec(1024, 3_000), &[], false);
}

/// 1 KiB blocks, 32-bit, no checksums, and directories left linear as mke2fs wrote them (no
/// e2fsck -D): a 3,000-entry directory scanned block by block.
#[test]
fn ext4_1k_no64bit_nocsum_linear_dirs() {
    let mut v = Variant::ext4("ext4-1k-no64bit-nocsum-linear", 1024);
    v.features = Some("^64bit,^metadata_csum");
    v.index_dirs = false;
    read_variant(v, spec(1024, 3_000), &[], false);
}

/// An ext3-style image: journal, no extents (indirect block maps, double-indirect for the
/// 100 MiB file), 128-byte inodes (no nanoseconds, no creation time).
#[test]
fn ext3_style() {
    let v = Variant {
        name: "ext3",
        fs_type: "ext3",
        block_size: 4096,
        inode_size: 128,
        features: None,
        index_dirs: true,
        kernel_written: false,
    };
    let mut s = spec(4096, 3_000);
    s.huge_file = true;
    s.wide_times = false;
    read_variant(v, s, &["--threads", "1"], false);
}

/// ext2: no journal, indirect maps with 1 KiB blocks (triple-indirect for the far sparse files).
#[test]
fn ext2_style_1k() {
    let v = Variant {
        name: "ext2-1k",
        fs_type: "ext2",
        block_size: 1024,
        inode_size: 256,
        features: None,
        index_dirs: true,
        kernel_written: false,
    };
    read_variant(v, spec(1024, 3_000), &[], false);
}

/// ext4 features with indirect block maps instead of extents (-O ^extent).
#[test]
fn ext4_no_extents() {
    let mut v = Variant::ext4("ext4-noextent", 4096);
    v.features = Some("^extent,^64bit");
    read_variant(v, spec(4096, 3_000), &[], false);
}

/// inline_data: small files and small directories live in the inode.
#[test]
fn ext4_inline_data() {
    let mut v = Variant::ext4("ext4-inline", 4096);
    v.features = Some("inline_data");
    let mut s = spec(4096, 3_000);
    s.tiny_things = true;
    s.trailing_holes = false;
    read_variant(v, s, &[], false);
}

/// An image written by the Linux kernel: mke2fs an empty file system, loop-mount it, cp -a the
/// tree in (xattrs, ACLs, nanosecond times), unmount; then read it through our mount.
#[test]
fn ext4_kernel_written() {
    let mut v = Variant::ext4("ext4-kernel-written", 4096);
    v.kernel_written = true;
    let mut s = spec(4096, 20_000);
    s.tiny_things = true;
    read_variant(v, s, &[], false);
}

/// SIGTERM detaches the mount; the daemon exits 0 and leaves the image clean.
#[test]
fn sigterm_unmounts_and_exits_zero() {
    require_root_and_tools();
    let tmp = tempfile::Builder::new()
        .prefix("vhe-read-sigterm-")
        .tempdir_in("/tmp")
        .unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("file"), b"contents\n").unwrap();
    let image = make_image(tmp.path(), &src, &Variant::ext4("sigterm", 4096));
    for args in [&["--read-only"][..], &[][..]] {
        let mut m = Mount::start(&image, &tmp.path().join("mnt"), args);
        assert_eq!(
            std::fs::read(m.dir.join("file")).unwrap(),
            b"contents\n",
            "{args:?}"
        );
        let status = m.terminate();
        let stderr = m.stderr();
        assert!(
            status.success(),
            "vhost-ext4 {args:?} exited with {status} after SIGTERM; stderr:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            !is_mounted(&m.dir, "fuse"),
            "SIGTERM left the mount at {}",
            m.dir.display()
        );
        assert_fsck_clean(&image);
    }
}
