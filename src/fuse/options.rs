//! mount(8)-style `-o` options for `vhost-ext4 mount`, with the kernel's meaning: the generic VFS
//! flags (ro/rw, atime policy, dev, suid, exec, sync, dirsync) become mount(2) flags, `fsname=`
//! and `subtype=` name the mount's source and type, ext4's own `errors=` and `data_err=` go to
//! the file system, and fstab-only words are accepted and ignored.

use super::devfuse::MountConfig;
use crate::fs::MountOptions;

/// The VFS mount flags one option word sets (`set`) and clears (`clear`).
struct FlagOpt {
    name: &'static str,
    set: libc::c_ulong,
    clear: libc::c_ulong,
}

const ATIME_MASK: libc::c_ulong = libc::MS_NOATIME | libc::MS_RELATIME | libc::MS_STRICTATIME;

const FLAG_OPTS: &[FlagOpt] = &[
    FlagOpt {
        name: "ro",
        set: libc::MS_RDONLY,
        clear: 0,
    },
    FlagOpt {
        name: "rw",
        set: 0,
        clear: libc::MS_RDONLY,
    },
    FlagOpt {
        name: "noatime",
        set: libc::MS_NOATIME,
        clear: ATIME_MASK,
    },
    FlagOpt {
        name: "atime",
        set: 0,
        clear: libc::MS_NOATIME,
    },
    FlagOpt {
        name: "relatime",
        set: libc::MS_RELATIME,
        clear: ATIME_MASK,
    },
    FlagOpt {
        name: "norelatime",
        set: 0,
        clear: libc::MS_RELATIME,
    },
    FlagOpt {
        name: "strictatime",
        set: libc::MS_STRICTATIME,
        clear: ATIME_MASK,
    },
    FlagOpt {
        name: "nostrictatime",
        set: 0,
        clear: libc::MS_STRICTATIME,
    },
    FlagOpt {
        name: "nodiratime",
        set: libc::MS_NODIRATIME,
        clear: 0,
    },
    FlagOpt {
        name: "diratime",
        set: 0,
        clear: libc::MS_NODIRATIME,
    },
    FlagOpt {
        name: "lazytime",
        set: libc::MS_LAZYTIME,
        clear: 0,
    },
    FlagOpt {
        name: "nolazytime",
        set: 0,
        clear: libc::MS_LAZYTIME,
    },
    FlagOpt {
        name: "nodev",
        set: libc::MS_NODEV,
        clear: 0,
    },
    FlagOpt {
        name: "dev",
        set: 0,
        clear: libc::MS_NODEV,
    },
    FlagOpt {
        name: "nosuid",
        set: libc::MS_NOSUID,
        clear: 0,
    },
    FlagOpt {
        name: "suid",
        set: 0,
        clear: libc::MS_NOSUID,
    },
    FlagOpt {
        name: "noexec",
        set: libc::MS_NOEXEC,
        clear: 0,
    },
    FlagOpt {
        name: "exec",
        set: 0,
        clear: libc::MS_NOEXEC,
    },
    FlagOpt {
        name: "sync",
        set: libc::MS_SYNCHRONOUS,
        clear: 0,
    },
    FlagOpt {
        name: "async",
        set: 0,
        clear: libc::MS_SYNCHRONOUS,
    },
    FlagOpt {
        name: "dirsync",
        set: libc::MS_DIRSYNC,
        clear: 0,
    },
    FlagOpt {
        name: "defaults",
        set: 0,
        clear: libc::MS_RDONLY,
    },
];

/// fstab and mount(8) words that mean nothing to the file system itself.
const IGNORED: &[&str] = &[
    "auto", "noauto", "nofail", "_netdev", "user", "nouser", "users", "owner", "group", "loop",
    "silent", "loud", "comment",
];

/// Apply a comma-separated option string (one `-o` argument) to `cfg` (the FUSE mount) and
/// `fs_opts` (the file system's own options).
pub fn apply(cfg: &mut MountConfig, fs_opts: &mut MountOptions, opts: &str) -> Result<(), String> {
    for word in opts.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word, None),
        };
        if let Some(f) = FLAG_OPTS.iter().find(|f| f.name == key) {
            if value.is_some() {
                return Err(format!("mount option {key} takes no value"));
            }
            cfg.flags = (cfg.flags & !f.clear) | f.set;
            continue;
        }
        if fs_opts.apply_ext4_option(key, value)? {
            continue;
        }
        match (key, value) {
            ("fsname", Some(v)) => {
                if v.is_empty() {
                    return Err("fsname= needs a name".into());
                }
                cfg.source = v.to_string();
            }
            // An empty subtype gives the plain kernel type "fuse".
            ("subtype", Some(v)) => {
                if v.contains(|c: char| c.is_whitespace() || c == '/') {
                    return Err(format!("bad subtype {v:?}"));
                }
                cfg.subtype = (!v.is_empty()).then(|| v.to_string());
            }
            ("allow_other", None) => cfg.allow_other = true,
            ("default_permissions", None) => cfg.default_permissions = true,
            ("remount", None) => {
                return Err(
                    "remount is done by mount(8) on the mounted file system, not by a new daemon"
                        .into(),
                );
            }
            (k, _) if IGNORED.contains(&k) || k.starts_with("x-") => {}
            _ => return Err(format!("unknown mount option {word:?}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(opts: &[&str]) -> Result<MountConfig, String> {
        parsed_both(opts).map(|(c, _)| c)
    }

    fn parsed_both(opts: &[&str]) -> Result<(MountConfig, MountOptions), String> {
        let mut c = MountConfig::new("/img", false);
        let mut f = MountOptions::rw();
        for o in opts {
            apply(&mut c, &mut f, o)?;
        }
        Ok((c, f))
    }

    #[test]
    fn defaults_follow_mount8() {
        let c = parsed(&[]).unwrap();
        assert_eq!(c.flags, 0);
        assert_eq!(c.fs_type(), "fuse.vhost-ext4");
        assert_eq!(c.source, "/img");
        assert!(!c.read_only());
    }

    #[test]
    fn flags_and_names() {
        let c =
            parsed(&["ro,noatime,nodev,nosuid,noexec,sync,dirsync,nodiratime,lazytime"]).unwrap();
        assert!(c.read_only());
        for f in [
            libc::MS_RDONLY,
            libc::MS_NOATIME,
            libc::MS_NODEV,
            libc::MS_NOSUID,
            libc::MS_NOEXEC,
            libc::MS_SYNCHRONOUS,
            libc::MS_DIRSYNC,
            libc::MS_NODIRATIME,
            libc::MS_LAZYTIME,
        ] {
            assert_ne!(c.flags & f, 0, "flag {f:#x}");
        }
        // Later words win, as with mount(8); the atime policies exclude each other.
        let c = parsed(&[
            "ro,noatime,nodev",
            "rw,strictatime,dev,fsname=/dev/x,subtype=",
        ])
        .unwrap();
        assert!(!c.read_only());
        assert_eq!(c.flags, libc::MS_STRICTATIME);
        assert_eq!(c.source, "/dev/x");
        assert_eq!(c.fs_type(), "fuse");
        let c =
            parsed(&["subtype=foo,relatime,defaults,noauto,x-systemd.automount,_netdev"]).unwrap();
        assert_eq!(c.fs_type(), "fuse.foo");
        assert_eq!(c.flags, libc::MS_RELATIME);
    }

    #[test]
    fn ext4_policies_go_to_the_file_system() {
        use crate::fs::{DataErr, OnError};
        let (c, f) = parsed_both(&[]).unwrap();
        assert_eq!((f.errors, f.data_err), (None, DataErr::Ignore));
        assert_eq!(c.flags, 0);
        let (c, f) = parsed_both(&["noatime,errors=remount-ro,data_err=abort"]).unwrap();
        assert_eq!(f.errors, Some(OnError::RemountRo));
        assert_eq!(f.data_err, DataErr::Abort);
        assert_eq!(c.flags, libc::MS_NOATIME);
        // Later words win.
        let (_, f) = parsed_both(&[
            "data_err=abort,errors=panic",
            "data_err=ignore,errors=continue",
        ])
        .unwrap();
        assert_eq!(f.errors, Some(OnError::Continue));
        assert_eq!(f.data_err, DataErr::Ignore);
    }

    #[test]
    fn bad_options_are_refused() {
        for bad in [
            "bogus",
            "ro=1",
            "fsname=",
            "subtype=a/b",
            "remount,ro",
            "uid",
            "errors",
            "errors=",
            "errors=remount_ro",
            "data_err",
            "data_err=yes",
        ] {
            assert!(parsed(&[bad]).is_err(), "{bad} accepted");
        }
    }
}
