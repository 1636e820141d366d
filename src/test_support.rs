//! Helpers shared by unit tests across layers: the e2fsck verdict on an image.

use std::path::Path;
use std::process::Command;

/// `e2fsck -fn` must find nothing to fix.
pub fn e2fsck_clean(img: &Path) {
    let out = Command::new("e2fsck")
        .args(["-fn"])
        .arg(img)
        .output()
        .expect("e2fsck (e2fsprogs) is required");
    assert!(
        out.status.success(),
        "e2fsck -fn found problems in {}:\n{}{}",
        img.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
