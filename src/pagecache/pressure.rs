//! The host's memory state, for the data path's reaction to memory pressure. Our page cache
//! lives in a memfd: shared memory the host kernel cannot reclaim as it reclaims its own page
//! cache (it can only swap it). So the daemon watches how much memory is left and gives cache
//! back itself when the host, or the cgroup the daemon runs in, runs short.
//!
//! A scope (the whole host from `/proc/meminfo`, and the daemon's memory cgroup, v1 or v2,
//! when it has a limit) is *short* when its available memory falls below a low mark: 1/32 of the
//! scope's size, at least 64 MiB and at most 1 GiB. The shortage is how far below the mark it
//! is; the larger of the two scopes' shortages counts.

use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;

/// One reading of a scope's memory: its size and what is still available (bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemScope {
    pub total: u64,
    pub available: u64,
}

impl MemScope {
    /// Below this much available memory the scope is short.
    pub fn low_mark(&self) -> u64 {
        (self.total / 32).clamp(64 * MIB, 1 << 30)
    }

    /// How far available memory is below the low mark (0 when it is not).
    pub fn shortage(&self) -> u64 {
        self.low_mark().saturating_sub(self.available)
    }
}

/// Where readings come from: the host (see [`HostMemory`]) or, in tests, a script.
pub trait MemorySource: Send + Sync {
    /// Bytes the daemon's scopes are short of memory right now (0: no pressure).
    fn shortage(&self) -> u64;
}

/// `/proc/meminfo`: MemTotal and MemAvailable (kB).
pub fn parse_meminfo(text: &str) -> Option<MemScope> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kb * 1024)
        })
    };
    Some(MemScope {
        total: field("MemTotal")?,
        available: field("MemAvailable")?,
    })
}

/// A memory cgroup's limit and usage (v2: `memory.max`, `memory.current`; v1:
/// `memory.limit_in_bytes`, `memory.usage_in_bytes`); `None` when it has no limit (v2 "max",
/// v1 a page-rounded i64::MAX). Reclaimable file pages of the cgroup (`inactive_file` in
/// `memory.stat`, when given) count as available, as MemAvailable counts them for the host.
pub fn parse_cgroup(max: &str, current: &str, stat: Option<&str>) -> Option<MemScope> {
    let max: u64 = max.trim().parse().ok().filter(|&m: &u64| m < 1 << 60)?;
    let current: u64 = current.trim().parse().ok()?;
    let reclaimable = stat
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("inactive_file ")?.trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    Some(MemScope {
        total: max,
        available: max.saturating_sub(current) + reclaimable.min(current),
    })
}

/// The memory cgroup of this process: its directory and the names of its limit and usage
/// files (cgroup v2: `0::/path`; v1: `N:memory:/path` in `/proc/self/cgroup`).
struct Cgroup {
    dir: PathBuf,
    limit: &'static str,
    usage: &'static str,
}

fn own_cgroup() -> Option<Cgroup> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let v1 = text.lines().find_map(|l| {
        let (_, rest) = l.split_once(':')?;
        let (controllers, path) = rest.split_once(':')?;
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then_some(path)
    });
    let found = match v1 {
        Some(path) => Cgroup {
            dir: Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/')),
            limit: "memory.limit_in_bytes",
            usage: "memory.usage_in_bytes",
        },
        None => Cgroup {
            dir: Path::new("/sys/fs/cgroup").join(
                text.lines()
                    .find_map(|l| l.strip_prefix("0::"))?
                    .trim_start_matches('/'),
            ),
            limit: "memory.max",
            usage: "memory.current",
        },
    };
    found.dir.join(found.limit).exists().then_some(found)
}

/// The host's readings: `/proc/meminfo`, and the daemon's memory cgroup when it is limited.
pub struct HostMemory {
    cgroup: Option<Cgroup>,
}

impl HostMemory {
    pub fn new() -> HostMemory {
        HostMemory {
            cgroup: own_cgroup(),
        }
    }

    fn cgroup_scope(&self) -> Option<MemScope> {
        let cg = self.cgroup.as_ref()?;
        let read = |f: &str| std::fs::read_to_string(cg.dir.join(f)).ok();
        parse_cgroup(
            &read(cg.limit)?,
            &read(cg.usage)?,
            read("memory.stat").as_deref(),
        )
    }
}

impl Default for HostMemory {
    fn default() -> Self {
        HostMemory::new()
    }
}

impl MemorySource for HostMemory {
    fn shortage(&self) -> u64 {
        let host = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| parse_meminfo(&t))
            .map_or(0, |s| s.shortage());
        let cgroup = self.cgroup_scope().map_or(0, |s| s.shortage());
        host.max(cgroup)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_read_in_kilobytes() {
        let text = "MemTotal:       24576000 kB\nMemFree:         1000 kB\nMemAvailable:    2048000 kB\nBuffers: 0 kB\n";
        let s = parse_meminfo(text).unwrap();
        assert_eq!(s.total, 24576000 * 1024);
        assert_eq!(s.available, 2048000 * 1024);
        // 24 GiB-ish host: the low mark is 1/32 (750 MiB), so 2 GB available is no shortage.
        assert_eq!(s.low_mark(), 24576000 * 1024 / 32);
        assert_eq!(s.shortage(), 0);
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
        assert_eq!(parse_meminfo(""), None);
    }

    #[test]
    fn low_marks_are_bounded() {
        let small = MemScope {
            total: 512 * MIB,
            available: 10 * MIB,
        };
        assert_eq!(small.low_mark(), 64 * MIB);
        assert_eq!(small.shortage(), 54 * MIB);
        let huge = MemScope {
            total: 1 << 40,
            available: 100 * MIB,
        };
        assert_eq!(huge.low_mark(), 1 << 30);
        assert_eq!(huge.shortage(), (1 << 30) - 100 * MIB);
    }

    #[test]
    fn cgroups_without_a_limit_do_not_count() {
        assert_eq!(parse_cgroup("max\n", "123456\n", None), None);
        assert_eq!(
            parse_cgroup("9223372036854771712\n", "123456\n", None),
            None
        );
        let s = parse_cgroup("1073741824\n", "1040187392\n", None).unwrap();
        assert_eq!(s.total, 1 << 30);
        assert_eq!(s.available, (1 << 30) - 1040187392);
        assert!(s.shortage() > 0);
        // Reclaimable file pages are available too.
        let stat = "anon 100\nfile 60000000\ninactive_file 50000000\nactive_file 10000000\n";
        let s = parse_cgroup("1073741824", "1040187392", Some(stat)).unwrap();
        assert_eq!(s.available, (1 << 30) - 1040187392 + 50000000);
        assert_eq!(s.shortage(), 0);
    }

    #[test]
    fn the_host_can_be_read() {
        let text = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
        let s = parse_meminfo(&text).expect("MemTotal and MemAvailable");
        assert!(s.total > 0 && s.available <= s.total);
        // Whatever the machine's state, a reading is a number of bytes, not an error.
        let _ = HostMemory::new().shortage();
    }
}
