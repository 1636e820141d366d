//! Journal recovery: replay the committed transactions of a jbd2 log into the file system, the
//! way the Linux kernel (`jbd2_journal_recover`) and e2fsck do.
//!
//! # Contract
//!
//! * The caller maps the journal inode (inode 8 usually, `s_journal_inum`) and passes its block
//!   list: `journal_blocks[i]` is the physical file-system block holding journal block `i`.
//! * [`recover`] reads and validates the journal superblock, and when the log is not empty
//!   (`s_start != 0`) replays it, flushes the device, then marks the log empty (`s_start = 0`,
//!   `s_sequence` = the next transaction id, checksum refreshed) and flushes again.
//! * It does **not** touch the ext4 superblock: clearing `EXT4_FEATURE_INCOMPAT_RECOVER` (and
//!   raising `EXT4_ERROR_FS` when the report says a commit was corrupt or the journal carries an
//!   `s_errno`) is the caller's job, after `recover` returned `Ok`.
//! * A crash at any point during recovery is safe: until the final superblock write the log is
//!   intact, and replaying it again writes the same blocks.
//! * `s_errno` is left in the journal superblock (and reported), as the kernel and e2fsck move it
//!   into the ext4 superblock themselves. `s_head` is left alone too, as e2fsck does: the
//!   journal superblock we write is byte for byte the one `e2fsck` writes after its replay
//!   (tests/journal_recovery.rs checks it on kernel-written crash images).
//!
//! # What is replayed
//!
//! Three passes over the log, as in the kernel:
//!
//! 1. **scan** from `s_start` expecting transaction `s_sequence`, following descriptors over
//!    their data blocks and wrapping from the end of the ring (`s_maxlen`, less the fast-commit
//!    area) back to `s_first`; the log ends at the first block without the magic, with another
//!    transaction id, or of an unknown type. A transaction counts only with its commit block.
//! 2. **revoke**: every revoke record of a committed transaction, keeping per block the latest
//!    transaction that revoked it.
//! 3. **replay**: every tagged block of every committed transaction, unless a revoke record
//!    from the same or a later transaction covers it, un-escaped, written home.
//!
//! Checksums, per the journal's features, with the kernel's decisions:
//!
//! * A commit block whose checksum (csum v2/v3 over the block — or over its header alone, the
//!   kernel's allowance for a torn tail — or the v1 crc32 of the transaction) fails ends the
//!   log *before* that transaction; it is reported as `failed_commit`, unless its commit time
//!   is older than the previous commit's, which marks stale blocks of an earlier log and ends
//!   the log silently.
//! * A descriptor or revoke block whose tail checksum fails is tolerated while scanning; if the
//!   commit block of its transaction is then newer than the previous commit, the journal is
//!   corrupt and recovery fails without writing anything (the kernel's -EFSBADCRC); if older,
//!   it is stale and ends the log.
//! * A data block whose tag checksum fails is **not replayed**; every other block still is,
//!   then recovery returns an error naming the bad blocks and leaves the journal superblock
//!   as it was, so the log still needs recovery. This is the kernel's choice (replay what it
//!   can, fail the journal load, mount refused); `e2fsck -fy` then decides.
//!
//! Fast commits (FAST_COMMIT journals) are ext4-level logical records this engine cannot apply:
//! if the fast-commit area starts with a head for the transaction after the last full commit
//! (the records the kernel would replay, or refuse as corrupt), recovery fails before writing
//! anything; an area that is empty or stale (older transaction) is ignored, as the kernel does.
//!
//! Differences from the kernel, none of which changes what is replayed: with ASYNC_COMMIT the
//! kernel goes on scanning past a failed commit without replaying any of it, here the scan
//! stops there; a log that runs past the length of the ring (only possible with crafted
//! blocks) is refused instead of being walked forever. After recovery the log restarts at
//! the id after the first unreplayed transaction, as the kernel's `++end_transaction` does, so
//! no block left in the log can pass for the next transaction.

use super::area::{JournalArea, LoadedSuperblock};
use crate::blockdev::BlockDevice;
use crate::ondisk::jbd2::{
    BlockHeader, BlockTag, CommitBlock, FastCommitHead, JournalFormat, JournalSuperblock,
    RevokeBlock, SUPERBLOCK_SIZE, block_tail_ok, blocktype, checksum_type, commit_checksum_ok,
    commit_checksum_ok_partial, crc32_be, descriptor_tags, fast_commit_head, tag_checksum_ok,
    tid_geq, tid_gt, unescape_block,
};
use std::collections::HashMap;

/// What [`recover`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Committed transactions found and replayed (`s_sequence` up to `last_sequence`).
    pub transactions_replayed: u32,
    /// Blocks written home.
    pub blocks_replayed: u64,
    /// Tagged blocks skipped because a revoke record covered them.
    pub blocks_revoked: u64,
    /// Id of the last replayed transaction (`s_sequence - 1` when none was).
    pub last_sequence: u32,
    /// The journal has FAST_COMMIT and its fast-commit area held stale fast commits (of an
    /// older transaction), which were ignored as the kernel ignores them.
    pub had_fast_commit_blocks: bool,
    /// First transaction id of the log (`s_sequence` before recovery).
    pub first_sequence: u32,
    /// `s_sequence` written after recovery: the log restarts there.
    pub next_sequence: u32,
    /// Revoke records read from committed transactions.
    pub revoke_records: u64,
    /// A transaction whose commit block failed its checksum: the log ended before it. The
    /// caller should flag the file system as having errors (the kernel logs "journal
    /// transaction N is corrupt").
    pub failed_commit: Option<u32>,
    /// `s_errno` of the journal superblock (nonzero: the journal was aborted), left in place.
    pub journal_errno: i32,
    /// False when the log was already empty (`s_start == 0`) and nothing was written.
    pub recovery_was_needed: bool,
    /// Journal block where the log started (`s_start`).
    pub log_start: u32,
    /// Journal block after the last replayed commit block (the kernel's `head_block`); below
    /// `log_start` when the log wrapped around the ring.
    pub log_end: u32,
}

/// What the log holds, found without writing anything ([`scan_log`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogSummary {
    /// `s_start` (0: the log is empty and was not scanned).
    pub start: u32,
    /// Journal block after the last valid commit block.
    pub end: u32,
    /// `s_sequence`.
    pub first_sequence: u32,
    /// First transaction id past the committed ones.
    pub end_sequence: u32,
    /// Committed transactions.
    pub transactions: u32,
    /// Tagged blocks of committed transactions.
    pub tagged_blocks: u64,
    /// Revoke records of committed transactions.
    pub revoke_records: u64,
    /// A transaction whose commit block failed its checksum.
    pub failed_commit: Option<u32>,
    /// The committed log runs past the end of the ring back to `s_first`.
    pub wraps: bool,
}

/// Does the journal hold transactions that were not checkpointed? (`s_start != 0`.)
pub fn needs_recovery(jsb: &JournalSuperblock) -> bool {
    jsb.start != 0
}

/// A tagged block in the log: where its logged copy sits and the tag describing it.
#[derive(Clone, Copy, Debug)]
struct LoggedBlock {
    log_block: u32,
    tag: BlockTag,
}

/// One committed transaction, as the scan found it.
#[derive(Debug)]
struct Transaction {
    tid: u32,
    blocks: Vec<LoggedBlock>,
    revoked: Vec<u64>,
    revoke_error: Option<String>,
}

impl Transaction {
    fn new(tid: u32) -> Transaction {
        Transaction {
            tid,
            blocks: Vec::new(),
            revoked: Vec::new(),
            revoke_error: None,
        }
    }
}

/// Result of the scan pass.
#[derive(Debug)]
struct Scan {
    committed: Vec<Transaction>,
    /// First transaction id not replayed (the kernel's `end_transaction`).
    end: u32,
    /// Journal block after the last valid commit (the kernel's `head_block`).
    head_block: u32,
    failed_commit: Option<u32>,
    /// The committed part of the log crosses the end of the ring.
    wrapped: bool,
}

/// The log ring `[first, last)`.
#[derive(Clone, Copy)]
struct Ring {
    first: u32,
    last: u32,
}

impl Ring {
    fn len(&self) -> u64 {
        (self.last - self.first) as u64
    }
    /// `pos` advanced by `n`, wrapping from `last` back to `first`.
    fn advance(&self, pos: u32, n: u64) -> u32 {
        let p = pos as u64 + n;
        if p < self.last as u64 {
            p as u32
        } else {
            (self.first as u64 + (p - self.first as u64) % self.len()) as u32
        }
    }
}

/// Pass 1: find the end of the log and collect every committed transaction.
fn scan(area: &JournalArea, sb: &JournalSuperblock, fmt: &JournalFormat) -> Result<Scan, String> {
    let ring = Ring {
        first: sb.first,
        last: sb.log_end(),
    };
    let bs = area.block_size();
    let mut buf = vec![0u8; bs];
    let mut data = vec![0u8; bs];
    let mut next_id = sb.sequence;
    let mut pos = sb.start;
    let mut head_block = pos;
    let mut consumed: u64 = 0;
    let mut committed = Vec::new();
    let mut cur = Transaction::new(next_id);
    let mut need_check_commit_time = false;
    let mut last_commit_time: u64 = 0;
    let mut crc32_sum: u32 = !0;
    let mut failed_commit = None;
    let mut wrapped = false;
    let mut wrapped_in_txn = false;

    'log: loop {
        if consumed > ring.len() {
            return Err(format!(
                "the journal log runs past the length of the journal ({} blocks) in transaction {next_id}: the journal is corrupt",
                ring.len()
            ));
        }
        let here = pos;
        area.read_block(pos, &mut buf)?;
        pos = ring.advance(pos, 1);
        consumed += 1;
        wrapped_in_txn |= here < sb.start;
        let Some(h) = BlockHeader::parse_jbd2(&buf) else {
            break;
        };
        if h.sequence != next_id {
            break;
        }
        match h.blocktype {
            blocktype::DESCRIPTOR => {
                if !block_tail_ok(fmt, &buf) {
                    // Possibly a stale block of an older log: judged at the commit block.
                    log::debug!("journal: descriptor at block {here} fails its checksum");
                    need_check_commit_time = true;
                }
                let tags = descriptor_tags(fmt, &buf);
                if fmt.compat_checksum() {
                    crc32_sum = crc32_be(crc32_sum, &buf);
                    for i in 0..tags.len() {
                        let p = ring.advance(pos, i as u64);
                        if let Err(e) = area.read_block(p, &mut data) {
                            log::error!("journal: {e}; the log ends here");
                            break 'log;
                        }
                        crc32_sum = crc32_be(crc32_sum, &data);
                    }
                }
                for tag in tags {
                    cur.blocks.push(LoggedBlock {
                        log_block: pos,
                        tag,
                    });
                    wrapped_in_txn |= pos < sb.start;
                    pos = ring.advance(pos, 1);
                    consumed += 1;
                }
            }
            blocktype::COMMIT => {
                let commit = CommitBlock::parse(fmt, &buf)?;
                let commit_time = commit.commit_sec;
                if need_check_commit_time {
                    if commit_time >= last_commit_time {
                        return Err(format!(
                            "journal transaction {next_id} has a descriptor or revoke block with a bad checksum: the journal is corrupt; run e2fsck -fy"
                        ));
                    }
                    log::info!(
                        "journal: bad checksum in transaction {next_id} ignored: stale blocks of an older log"
                    );
                    break;
                }
                let ok = if fmt.compat_checksum() {
                    let matches = commit.chksum[0] == crc32_sum
                        && commit.chksum_type == checksum_type::CRC32
                        && commit.chksum_size == 4;
                    let unused =
                        commit.chksum_type == 0 && commit.chksum_size == 0 && commit.chksum[0] == 0;
                    matches || unused
                } else if commit_checksum_ok(fmt, &buf) {
                    true
                } else if commit_checksum_ok_partial(fmt, &buf) {
                    log::info!(
                        "journal: incomplete commit block of transaction {next_id} at block {here} accepted"
                    );
                    true
                } else {
                    false
                };
                if !ok {
                    if commit_time >= last_commit_time {
                        log::error!(
                            "journal: commit block of transaction {next_id} at block {here} fails its checksum; the log ends before it"
                        );
                        failed_commit = Some(next_id);
                    }
                    break;
                }
                last_commit_time = commit_time;
                crc32_sum = !0;
                head_block = pos;
                wrapped |= wrapped_in_txn;
                committed.push(std::mem::replace(
                    &mut cur,
                    Transaction::new(next_id.wrapping_add(1)),
                ));
                next_id = next_id.wrapping_add(1);
            }
            blocktype::REVOKE => {
                if !block_tail_ok(fmt, &buf) {
                    log::debug!("journal: revoke block at block {here} fails its checksum");
                    need_check_commit_time = true;
                }
                match RevokeBlock::parse(fmt, &buf) {
                    Ok(r) => cur.revoked.extend(r.blocks),
                    Err(e) => {
                        cur.revoke_error.get_or_insert(e);
                    }
                }
            }
            _ => break,
        }
    }
    Ok(Scan {
        committed,
        end: next_id,
        head_block,
        failed_commit,
        wrapped,
    })
}

/// Refuse a fast-commit area the kernel would replay: one that starts with a head for the
/// transaction after the last full commit. Returns whether stale fast commits were there.
fn check_fast_commits(
    area: &JournalArea,
    sb: &JournalSuperblock,
    expected_tid: u32,
) -> Result<bool, String> {
    let range = sb.fast_commit_range();
    if range.is_empty() {
        return Ok(false);
    }
    let mut buf = vec![0u8; area.block_size()];
    area.read_block(range.start, &mut buf)?;
    match fast_commit_head(&buf) {
        FastCommitHead::None => Ok(false),
        FastCommitHead::Head { tid, .. } if tid == expected_tid => Err(
            "journal has fast-commit content, which this engine cannot replay; run e2fsck -fy"
                .to_string(),
        ),
        FastCommitHead::Head { tid, .. } => {
            log::info!(
                "journal: stale fast commits (after transaction {tid}, expected {expected_tid}) ignored"
            );
            Ok(true)
        }
    }
}

/// Scan the log without writing: where it starts and ends, and what it holds. Errors as for
/// [`recover`] (an unreadable or invalid superblock, a corrupt log).
pub fn scan_log(
    dev: &dyn BlockDevice,
    fs_block_size: u32,
    journal_blocks: &[u64],
) -> Result<LogSummary, String> {
    let area = JournalArea::new(dev, fs_block_size, journal_blocks)?;
    let LoadedSuperblock { sb, .. } = area.load_superblock()?;
    let mut summary = LogSummary {
        first_sequence: sb.sequence,
        end_sequence: sb.sequence,
        ..LogSummary::default()
    };
    if !needs_recovery(&sb) {
        return Ok(summary);
    }
    let scan = scan(&area, &sb, &sb.format())?;
    summary.start = sb.start;
    summary.end = scan.head_block;
    summary.end_sequence = scan.end;
    summary.transactions = scan.committed.len() as u32;
    summary.tagged_blocks = scan.committed.iter().map(|t| t.blocks.len() as u64).sum();
    summary.revoke_records = scan.committed.iter().map(|t| t.revoked.len() as u64).sum();
    summary.failed_commit = scan.failed_commit;
    summary.wraps = scan.wrapped;
    Ok(summary)
}

/// Replay the journal whose blocks `journal_blocks` lists (see the module documentation).
pub fn recover(
    dev: &dyn BlockDevice,
    fs_block_size: u32,
    journal_blocks: &[u64],
) -> Result<RecoveryReport, String> {
    let area = JournalArea::new(dev, fs_block_size, journal_blocks)?;
    let LoadedSuperblock { sb, mut raw } = area.load_superblock()?;
    let fmt = sb.format();
    let mut report = RecoveryReport {
        first_sequence: sb.sequence,
        next_sequence: sb.sequence,
        last_sequence: sb.sequence.wrapping_sub(1),
        journal_errno: sb.errno,
        ..RecoveryReport::default()
    };
    if !needs_recovery(&sb) {
        return Ok(report);
    }
    report.recovery_was_needed = true;

    // Pass 1.
    let scan = scan(&area, &sb, &fmt)?;
    if fmt.fast_commit() {
        report.had_fast_commit_blocks = check_fast_commits(&area, &sb, scan.end)?;
    }
    for t in &scan.committed {
        if let Some(e) = &t.revoke_error {
            return Err(format!("journal transaction {}: {e}", t.tid));
        }
    }

    // Pass 2: the latest transaction that revoked each block.
    let mut revoked: HashMap<u64, u32> = HashMap::new();
    for t in &scan.committed {
        for &b in &t.revoked {
            report.revoke_records += 1;
            revoked
                .entry(b)
                .and_modify(|r| {
                    if tid_gt(t.tid, *r) {
                        *r = t.tid;
                    }
                })
                .or_insert(t.tid);
        }
    }

    // Pass 3.
    let bs = area.block_size();
    let dev_blocks = dev.size() / bs as u64;
    let mut buf = vec![0u8; bs];
    let mut failures: Vec<String> = Vec::new();
    for t in &scan.committed {
        for lb in &t.blocks {
            let home = lb.tag.blocknr;
            if revoked.get(&home).is_some_and(|&r| tid_geq(r, t.tid)) {
                report.blocks_revoked += 1;
                continue;
            }
            if let Err(e) = area.read_block(lb.log_block, &mut buf) {
                failures.push(e);
                continue;
            }
            if !tag_checksum_ok(&fmt, &lb.tag, t.tid, &buf) {
                log::error!(
                    "journal: data block for block {home} (journal block {}, transaction {}) fails its checksum; not replayed",
                    lb.log_block,
                    t.tid
                );
                failures.push(format!(
                    "block {home} (journal block {}, transaction {}) fails its checksum",
                    lb.log_block, t.tid
                ));
                continue;
            }
            if home >= dev_blocks {
                failures.push(format!(
                    "block {home} (transaction {}) is past the end of the device",
                    t.tid
                ));
                continue;
            }
            unescape_block(&mut buf, lb.tag.flags);
            if let Err(e) = dev.write_at(&buf, home * bs as u64) {
                failures.push(format!("writing block {home}: {e}"));
                continue;
            }
            report.blocks_replayed += 1;
        }
        report.transactions_replayed += 1;
    }
    area.flush()?;
    if !failures.is_empty() {
        let n = failures.len();
        failures.truncate(8);
        return Err(format!(
            "journal recovery failed: {n} block(s) could not be replayed ({}{}); the other blocks were written and the journal was left needing recovery; run e2fsck -fy",
            failures.join("; "),
            if n > 8 { "; …" } else { "" }
        ));
    }

    // Mark the log empty, restarting it past every id the log may still hold.
    let next = scan.end.wrapping_add(1);
    let mut new_sb = sb.clone();
    new_sb.start = 0;
    new_sb.sequence = next;
    new_sb.write_into(&mut raw[..SUPERBLOCK_SIZE]);
    JournalSuperblock::seal(&mut raw[..SUPERBLOCK_SIZE]);
    area.write_block(0, &raw)?;
    area.flush()?;

    report.last_sequence = scan.end.wrapping_sub(1);
    report.next_sequence = next;
    report.failed_commit = scan.failed_commit;
    report.log_start = sb.start;
    report.log_end = scan.head_block;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockdev::MemDevice;
    use crate::ondisk::jbd2::{
        DescriptorBuilder, JBD2_MAGIC, RevokeBuilder, fc_tag, feature, tag_flag,
    };

    /// A file system whose journal of `jlen` blocks sits in two non-contiguous extents from fs
    /// block 200 on; blocks below 200 are the tests' targets.
    struct TestJournal {
        dev: MemDevice,
        fs_blocks: u64,
        bs: usize,
        map: Vec<u64>,
        sb: JournalSuperblock,
        fmt: JournalFormat,
        /// Next journal block to write.
        pos: u32,
        time: u64,
    }

    impl TestJournal {
        fn new(bs: usize, jlen: u32, compat: u32, incompat: u32) -> TestJournal {
            let fs_blocks = 200 + jlen as u64 + 150;
            let dev = MemDevice::new(fs_blocks as usize * bs);
            let half = jlen as u64 / 2;
            let map: Vec<u64> = (0..jlen as u64)
                .map(|i| if i < half { 200 + i } else { 250 + i })
                .collect();
            let mut sb = JournalSuperblock::new(bs as u32, jlen, *b"journal-uuid-123");
            sb.feature_compat = compat;
            sb.feature_incompat = incompat;
            if incompat & (feature::INCOMPAT_CSUM_V2 | feature::INCOMPAT_CSUM_V3) != 0 {
                sb.checksum_type = checksum_type::CRC32C;
            }
            sb.sequence = 10;
            let fmt = sb.format();
            let mut t = TestJournal {
                dev,
                fs_blocks,
                bs,
                map,
                sb,
                fmt,
                pos: 1,
                time: 1_000,
            };
            // Fill the fs with a recognisable pattern: block b is all (b % 251) bytes.
            for b in 0..fs_blocks {
                if !t.map.contains(&b) {
                    t.dev
                        .write_at(&vec![(b % 251) as u8; bs], b * bs as u64)
                        .unwrap();
                }
            }
            t.write_sb(0, 10);
            t
        }

        fn write_sb(&mut self, start: u32, sequence: u32) {
            self.sb.start = start;
            self.sb.sequence = sequence;
            let mut raw = vec![0u8; self.bs];
            raw[..1024].copy_from_slice(&self.sb.to_bytes());
            self.write_j(0, &raw);
        }

        fn write_j(&self, j: u32, data: &[u8]) {
            self.dev
                .write_at(data, self.map[j as usize] * self.bs as u64)
                .unwrap();
        }

        fn read_j(&self, j: u32) -> Vec<u8> {
            let mut b = vec![0u8; self.bs];
            self.dev
                .read_at(&mut b, self.map[j as usize] * self.bs as u64)
                .unwrap();
            b
        }

        fn put(&mut self, data: &[u8]) -> u32 {
            let p = self.pos;
            self.write_j(p, data);
            self.pos += 1;
            if self.pos >= self.sb.log_end() {
                self.pos = self.sb.first;
            }
            p
        }

        /// Log one transaction: revoke blocks, then descriptors with their data, then (when
        /// `commit`) the commit block. Returns the journal block of every logged data block
        /// and of the commit block.
        fn txn(
            &mut self,
            tid: u32,
            blocks: &[(u64, Vec<u8>)],
            revokes: &[u64],
            commit: bool,
        ) -> (Vec<u32>, Option<u32>) {
            let fmt = self.fmt;
            let mut v1 = !0u32;
            if !revokes.is_empty() {
                let mut r = RevokeBuilder::new(&fmt, tid);
                for &b in revokes {
                    if r.add(b).is_err() {
                        let full = std::mem::replace(&mut r, RevokeBuilder::new(&fmt, tid));
                        self.put(&full.finish());
                        r.add(b).unwrap();
                    }
                }
                self.put(&r.finish());
            }
            let mut logged_at = Vec::new();
            let mut i = 0;
            while i < blocks.len() {
                let mut d = DescriptorBuilder::new(&fmt, tid);
                let mut logged = Vec::new();
                while i < blocks.len() {
                    match d.add(blocks[i].0, &blocks[i].1) {
                        Ok(l) => logged.push(l.into_owned()),
                        Err(_) => break,
                    }
                    i += 1;
                }
                let desc = d.finish().unwrap();
                v1 = crc32_be(v1, &desc);
                self.put(&desc);
                for l in logged {
                    v1 = crc32_be(v1, &l);
                    logged_at.push(self.put(&l));
                }
            }
            if !commit {
                return (logged_at, None);
            }
            self.time += 1;
            let mut c = CommitBlock::new(tid, self.time, 0);
            if fmt.compat_checksum() {
                c = c.with_v1_checksum(v1);
            }
            let at = self.put(&c.build(&fmt));
            (logged_at, Some(at))
        }

        fn fs_block(&self, b: u64) -> Vec<u8> {
            let mut v = vec![0u8; self.bs];
            self.dev.read_at(&mut v, b * self.bs as u64).unwrap();
            v
        }

        fn recover(&self) -> Result<RecoveryReport, String> {
            recover(&self.dev, self.bs as u32, &self.map)
        }

        fn jsb(&self) -> JournalSuperblock {
            JournalSuperblock::parse(&self.read_j(0)[..1024]).unwrap()
        }
    }

    fn pattern(b: u64, bs: usize) -> Vec<u8> {
        vec![(b % 251) as u8; bs]
    }

    fn filled(seed: u8, bs: usize) -> Vec<u8> {
        (0..bs).map(|i| seed.wrapping_add((i * 7) as u8)).collect()
    }

    fn formats() -> Vec<(u32, u32)> {
        vec![
            (0, 0),
            (0, feature::INCOMPAT_64BIT),
            (0, feature::INCOMPAT_CSUM_V2),
            (0, feature::INCOMPAT_CSUM_V2 | feature::INCOMPAT_64BIT),
            (0, feature::INCOMPAT_CSUM_V3),
            (0, feature::INCOMPAT_CSUM_V3 | feature::INCOMPAT_64BIT),
            (feature::COMPAT_CHECKSUM, 0),
        ]
    }

    #[test]
    fn replays_committed_transactions_in_every_format() {
        for bs in [1024usize, 4096] {
            for (compat, incompat) in formats() {
                let mut j = TestJournal::new(bs, 128, compat, incompat | feature::INCOMPAT_REVOKE);
                // Enough blocks in one transaction to need two descriptors with 1 KiB blocks.
                let n = if bs == 1024 { 70 } else { 5 };
                let t1: Vec<(u64, Vec<u8>)> = (0..n)
                    .map(|i| (10 + i as u64, filled(i as u8, bs)))
                    .collect();
                j.txn(10, &t1[..n / 2], &[], true);
                j.txn(11, &t1[n / 2..], &[], true);
                // Block 10 again, newer content, in a third transaction.
                j.txn(12, &[(10, filled(200, bs))], &[], true);
                j.write_sb(1, 10);
                let r = j.recover().unwrap();
                let what = format!("bs {bs} compat {compat:#x} incompat {incompat:#x}");
                assert_eq!(r.transactions_replayed, 3, "{what}");
                assert_eq!(r.blocks_replayed, n as u64 + 1, "{what}");
                assert_eq!(r.last_sequence, 12);
                assert_eq!(r.next_sequence, 14);
                assert_eq!(r.failed_commit, None);
                assert!(r.recovery_was_needed);
                assert_eq!(j.fs_block(10), filled(200, bs), "{what}");
                for (b, d) in &t1[1..] {
                    assert_eq!(&j.fs_block(*b), d, "{what} block {b}");
                }
                assert_eq!(j.fs_block(10 + n as u64), pattern(10 + n as u64, bs));
                let sb = j.jsb();
                assert_eq!(sb.start, 0);
                assert_eq!(sb.sequence, 14);
                assert!(JournalSuperblock::checksum_ok(&j.read_j(0)));
                // A second recovery has nothing to do and writes nothing.
                let before = j.dev.snapshot();
                let r = j.recover().unwrap();
                assert!(!r.recovery_was_needed);
                assert_eq!(r.transactions_replayed, 0);
                assert_eq!(j.dev.snapshot(), before);
            }
        }
    }

    #[test]
    fn uncommitted_transaction_is_not_replayed() {
        let mut j = TestJournal::new(1024, 64, 0, feature::INCOMPAT_CSUM_V3);
        j.txn(10, &[(20, filled(1, 1024))], &[], true);
        j.txn(11, &[(21, filled(2, 1024))], &[], false);
        j.write_sb(1, 10);
        let before = j.dev.snapshot();
        let summary = scan_log(&j.dev, 1024, &j.map).unwrap();
        assert!(!summary.wraps);
        assert_eq!(
            (summary.start, summary.end, summary.transactions),
            (1, 4, 1)
        );
        assert_eq!(j.dev.snapshot(), before, "scan_log writes nothing");
        let r = j.recover().unwrap();
        assert_eq!(r.transactions_replayed, 1);
        assert_eq!(j.fs_block(20), filled(1, 1024));
        assert_eq!(j.fs_block(21), pattern(21, 1024));
        // The log restarts past the id of the incomplete transaction.
        assert_eq!(j.jsb().sequence, 12);
    }

    #[test]
    fn revoke_records_skip_older_and_equal_transactions_only() {
        for incompat in [0, feature::INCOMPAT_64BIT | feature::INCOMPAT_CSUM_V3] {
            let bs = 1024;
            let mut j = TestJournal::new(bs, 64, 0, incompat | feature::INCOMPAT_REVOKE);
            // T10 logs 30 and 31; T11 revokes 30 (freed, reused as data) and logs 32;
            // T12 logs 30 again (reallocated as metadata): that copy must land.
            // T12 also revokes 33 and logs 33 itself: revoked (same transaction).
            j.txn(
                10,
                &[
                    (30, filled(1, bs)),
                    (31, filled(2, bs)),
                    (34, filled(9, bs)),
                ],
                &[],
                true,
            );
            j.txn(11, &[(32, filled(3, bs))], &[30, 34], true);
            j.txn(12, &[(33, filled(4, bs))], &[33], true);
            j.txn(13, &[(34, filled(5, bs))], &[], true);
            // Revoke in an uncommitted transaction: ignored.
            j.txn(14, &[], &[31], false);
            j.write_sb(1, 10);
            let r = j.recover().unwrap();
            assert_eq!(r.transactions_replayed, 4);
            assert_eq!(r.revoke_records, 3);
            assert_eq!(r.blocks_revoked, 3); // 30 and 34 in T10, 33 in T12
            assert_eq!(r.blocks_replayed, 3); // 31, 32, 34 (T13)
            assert_eq!(j.fs_block(30), pattern(30, bs));
            assert_eq!(j.fs_block(31), filled(2, bs));
            assert_eq!(j.fs_block(32), filled(3, bs));
            assert_eq!(j.fs_block(33), pattern(33, bs));
            assert_eq!(j.fs_block(34), filled(5, bs));
        }
    }

    #[test]
    fn revoke_blocks_spanning_several_blocks() {
        let bs = 1024;
        let mut j = TestJournal::new(bs, 64, 0, feature::INCOMPAT_CSUM_V3);
        let many: Vec<u64> = (0..400).map(|i| 1000 + i).chain([40]).collect();
        j.txn(10, &[(40, filled(1, bs))], &[], true);
        j.txn(11, &[], &many, true);
        j.write_sb(1, 10);
        let r = j.recover().unwrap();
        assert_eq!(r.revoke_records, 401);
        assert_eq!(r.blocks_revoked, 1);
        assert_eq!(j.fs_block(40), pattern(40, bs));
    }

    #[test]
    fn escaped_blocks_get_their_magic_back() {
        for incompat in [0, feature::INCOMPAT_CSUM_V2, feature::INCOMPAT_CSUM_V3] {
            let bs = 4096;
            let mut j = TestJournal::new(bs, 32, 0, incompat);
            let mut d = filled(7, bs);
            d[..4].copy_from_slice(&JBD2_MAGIC.to_be_bytes());
            // A data block that looks like a commit block of this very transaction.
            let mut fake = CommitBlock::new(10, 5, 0).build(&j.fmt);
            fake[100] = 1;
            let (at, _) = j.txn(10, &[(50, d.clone()), (51, fake.clone())], &[], true);
            assert_eq!(&j.read_j(at[0])[..4], &[0; 4]);
            j.write_sb(1, 10);
            let r = j.recover().unwrap();
            assert_eq!(r.blocks_replayed, 2);
            assert_eq!(j.fs_block(50), d);
            assert_eq!(j.fs_block(51), fake);
        }
    }

    #[test]
    fn bad_commit_checksum_ends_the_log() {
        let bs = 1024;
        let mut j = TestJournal::new(bs, 64, 0, feature::INCOMPAT_CSUM_V3);
        j.txn(10, &[(60, filled(1, bs))], &[], true);
        let (_, commit) = j.txn(11, &[(61, filled(2, bs))], &[], true);
        j.txn(12, &[(62, filled(3, bs))], &[], true);
        let c = commit.unwrap();
        let mut b = j.read_j(c);
        b[0x38] ^= 0x10; // commit nsec: the block checksum no longer matches
        j.write_j(c, &b);
        j.write_sb(1, 10);
        let r = j.recover().unwrap();
        assert_eq!(r.transactions_replayed, 1);
        assert_eq!(r.failed_commit, Some(11));
        assert_eq!(r.last_sequence, 10);
        assert_eq!(j.fs_block(60), filled(1, bs));
        assert_eq!(j.fs_block(61), pattern(61, bs));
        assert_eq!(j.fs_block(62), pattern(62, bs));
        assert_eq!(j.jsb().sequence, 12);
    }

    #[test]
    fn torn_commit_tail_is_accepted_like_the_kernel() {
        let bs = 4096;
        let mut j = TestJournal::new(bs, 32, 0, feature::INCOMPAT_CSUM_V3);
        let (_, commit) = j.txn(10, &[(60, filled(1, bs))], &[], true);
        let c = commit.unwrap();
        let mut b = j.read_j(c);
        b[3000] = 0xEE; // past the commit header
        j.write_j(c, &b);
        j.write_sb(1, 10);
        let r = j.recover().unwrap();
        assert_eq!(r.transactions_replayed, 1);
        assert_eq!(r.failed_commit, None);
    }

    #[test]
    fn stale_commit_with_older_time_ends_the_log_silently() {
        let bs = 1024;
        let mut j = TestJournal::new(bs, 64, 0, feature::INCOMPAT_CSUM_V3);
        j.txn(10, &[(60, filled(1, bs))], &[], true);
        j.time = 5; // older than T10's commit
        let (_, commit) = j.txn(11, &[(61, filled(2, bs))], &[], true);
        let c = commit.unwrap();
        let mut b = j.read_j(c);
        b[0x38] ^= 1;
        j.write_j(c, &b);
        j.write_sb(1, 10);
        let r = j.recover().unwrap();
        assert_eq!(r.transactions_replayed, 1);
        assert_eq!(r.failed_commit, None);
    }

    #[test]
    fn bad_descriptor_checksum_with_newer_commit_fails_before_writing() {
        let bs = 1024;
        let mut j = TestJournal::new(bs, 64, 0, feature::INCOMPAT_CSUM_V3);
        j.txn(10, &[(60, filled(1, bs))], &[], true);
        let before_t11 = j.pos;
        j.txn(11, &[(61, filled(2, bs))], &[], true);
        let mut d = j.read_j(before_t11);
        d[200] ^= 1;
        j.write_j(before_t11, &d);
        j.write_sb(1, 10);
        let before = j.dev.snapshot();
        let e = j.recover().unwrap_err();
        assert!(e.contains("transaction 11"), "{e}");
        assert_eq!(j.dev.snapshot(), before, "nothing may be written");
        // Same with a bad revoke block.
        let mut j = TestJournal::new(bs, 64, 0, feature::INCOMPAT_CSUM_V3);
        j.txn(10, &[(60, filled(1, bs))], &[], true);
        let at = j.pos;
        j.txn(11, &[(61, filled(2, bs))], &[60], true);
        let mut d = j.read_j(at);
        d[20] ^= 1;
        j.write_j(at, &d);
        j.write_sb(1, 10);
        assert!(j.recover().is_err());
    }

    #[test]
    fn bad_data_checksum_skips_the_block_and_fails() {
        for incompat in [feature::INCOMPAT_CSUM_V2, feature::INCOMPAT_CSUM_V3] {
            let bs = 1024;
            let mut j = TestJournal::new(bs, 64, 0, incompat);
            let (at, _) = j.txn(10, &[(70, filled(1, bs)), (71, filled(2, bs))], &[], true);
            let mut d = j.read_j(at[0]);
            d[500] ^= 0x80;
            j.write_j(at[0], &d);
            j.write_sb(1, 10);
            let e = j.recover().unwrap_err();
            assert!(e.contains("block 70"), "{e}");
            assert_eq!(j.fs_block(70), pattern(70, bs));
            assert_eq!(j.fs_block(71), filled(2, bs));
            // The journal still needs recovery.
            assert_eq!(j.jsb().start, 1);
        }
    }

    #[test]
    fn v1_transaction_checksum() {
        let bs = 1024;
        let mut j = TestJournal::new(bs, 64, feature::COMPAT_CHECKSUM, 0);
        j.txn(10, &[(80, filled(1, bs))], &[], true);
        let (at, _) = j.txn(11, &[(81, filled(2, bs))], &[], true);
        // Corrupting a data block of T11 breaks its transaction checksum.
        let mut d = j.read_j(at[0]);
        d[9] ^= 1;
        j.write_j(at[0], &d);
        j.write_sb(1, 10);
        let r = j.recover().unwrap();
        assert_eq!(r.transactions_replayed, 1);
        assert_eq!(r.failed_commit, Some(11));
        assert_eq!(j.fs_block(80), filled(1, bs));
        assert_eq!(j.fs_block(81), pattern(81, bs));
    }

    #[test]
    fn log_wraps_around_the_ring() {
        for incompat in [0, feature::INCOMPAT_CSUM_V3 | feature::INCOMPAT_64BIT] {
            let bs = 1024;
            let mut j = TestJournal::new(bs, 40, 0, incompat | feature::INCOMPAT_REVOKE);
            // An old, checkpointed log fills the ring with ids 1..: stale blocks everywhere.
            j.pos = 1;
            for tid in 1..8u32 {
                j.txn(tid, &[(90, filled(tid as u8, bs))], &[], true);
            }
            // The live log starts near the end of the ring and wraps.
            j.pos = 34;
            let start = j.pos;
            let blocks: Vec<(u64, Vec<u8>)> = (0..6)
                .map(|i| (150 + i, filled(50 + i as u8, bs)))
                .collect();
            let (at, _) = j.txn(20, &blocks, &[], true);
            j.txn(21, &[(160, filled(99, bs))], &[153], true);
            assert!(at.iter().any(|&p| p < start), "the test log must wrap");
            j.write_sb(start, 20);
            let summary = scan_log(&j.dev, bs as u32, &j.map).unwrap();
            assert!(summary.wraps);
            assert_eq!(summary.transactions, 2);
            assert_eq!(summary.tagged_blocks, 7);
            assert_eq!(summary.revoke_records, 1);
            assert_eq!(summary.end_sequence, 22);
            let r = j.recover().unwrap();
            assert_eq!(r.transactions_replayed, 2);
            assert_eq!(r.log_start, start);
            assert!(r.log_end < start);
            assert_eq!(r.blocks_replayed, 6);
            assert_eq!(r.blocks_revoked, 1);
            for (b, d) in &blocks {
                if *b == 153 {
                    assert_eq!(j.fs_block(*b), pattern(*b, bs));
                } else {
                    assert_eq!(&j.fs_block(*b), d);
                }
            }
            assert_eq!(j.fs_block(160), filled(99, bs));
            assert_eq!(j.fs_block(90), pattern(90, bs));
            assert_eq!(j.jsb().sequence, 23);
        }
    }

    #[test]
    fn stale_log_after_start_is_not_replayed() {
        // s_start points at blocks of older transactions: nothing matches s_sequence.
        let bs = 1024;
        let mut j = TestJournal::new(bs, 64, 0, feature::INCOMPAT_CSUM_V3);
        j.txn(3, &[(95, filled(1, bs))], &[], true);
        j.write_sb(1, 4);
        let r = j.recover().unwrap();
        assert_eq!(r.transactions_replayed, 0);
        assert_eq!(r.last_sequence, 3);
        assert_eq!(j.fs_block(95), pattern(95, bs));
        assert_eq!(j.jsb().sequence, 5);
        assert_eq!(j.jsb().start, 0);
    }

    fn fc_journal(head_tid: Option<u32>) -> TestJournal {
        let bs = 1024;
        let mut j = TestJournal::new(
            bs,
            1100,
            0,
            feature::INCOMPAT_CSUM_V3 | feature::INCOMPAT_FAST_COMMIT,
        );
        j.sb.num_fc_blks = 16;
        j.write_sb(0, 10);
        j.txn(10, &[(120, filled(1, bs))], &[], true);
        if let Some(tid) = head_tid {
            let mut b = vec![0u8; bs];
            b[0..2].copy_from_slice(&fc_tag::HEAD.to_le_bytes());
            b[2..4].copy_from_slice(&8u16.to_le_bytes());
            b[8..12].copy_from_slice(&tid.to_le_bytes());
            let first_fc = j.sb.fast_commit_range().start;
            assert_eq!(first_fc, 1100 - 16 + 1);
            j.write_j(first_fc, &b);
        }
        j.write_sb(1, 10);
        j
    }

    #[test]
    fn fast_commit_area() {
        // Empty area.
        let j = fc_journal(None);
        let r = j.recover().unwrap();
        assert!(!r.had_fast_commit_blocks);
        assert_eq!(j.fs_block(120), filled(1, 1024));
        // Stale fast commits (after an older transaction): ignored.
        let j = fc_journal(Some(7));
        let r = j.recover().unwrap();
        assert!(r.had_fast_commit_blocks);
        assert_eq!(r.transactions_replayed, 1);
        // Live fast commits (after T10, the last full commit): refused, nothing written.
        let j = fc_journal(Some(11));
        let before = j.dev.snapshot();
        let e = j.recover().unwrap_err();
        assert_eq!(
            e,
            "journal has fast-commit content, which this engine cannot replay; run e2fsck -fy"
        );
        assert_eq!(j.dev.snapshot(), before);
    }

    #[test]
    fn bad_geometry_is_refused() {
        let j = TestJournal::new(1024, 64, 0, 0);
        assert!(recover(&j.dev, 1024, &j.map[..32]).is_err());
        assert!(recover(&j.dev, 4096, &j.map).is_err());
        assert!(recover(&j.dev, 1024, &[]).is_err());
        let far: Vec<u64> = j.map.iter().map(|b| b + 1_000_000).collect();
        assert!(recover(&j.dev, 1024, &far).is_err());
    }

    #[test]
    fn tags_pointing_past_the_device_fail() {
        let bs = 1024;
        let mut j = TestJournal::new(bs, 64, 0, feature::INCOMPAT_64BIT);
        let past = j.fs_blocks + 5;
        j.txn(10, &[(past, filled(1, bs)), (7, filled(2, bs))], &[], true);
        j.write_sb(1, 10);
        let e = j.recover().unwrap_err();
        assert!(e.contains("past the end"), "{e}");
        assert_eq!(j.fs_block(7), filled(2, bs));
    }

    #[test]
    fn looping_descriptors_are_refused_not_walked_forever() {
        // A descriptor whose tags cover the whole ring lands on itself again, with the same
        // transaction id, over and over.
        let bs = 1024;
        let j = TestJournal::new(bs, 40, 0, 0);
        let fmt = j.fmt;
        let mut d = DescriptorBuilder::new(&fmt, 10);
        for i in 0..38 {
            d.add(100 + i, &filled(0, bs)).unwrap();
        }
        // 38 tags + the descriptor = 39 blocks = the ring (1..40): back at block 1.
        j.write_j(1, &d.finish().unwrap());
        let mut t = j;
        t.write_sb(1, 10);
        let e = t.recover().unwrap_err();
        assert!(e.contains("runs past"), "{e}");
    }

    #[test]
    fn garbage_logs_never_panic() {
        let bs = 1024;
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for (compat, incompat) in formats() {
            for round in 0..40 {
                let mut j = TestJournal::new(bs, 48, compat, incompat);
                for jb in 1..48u32 {
                    let mut b: Vec<u8> = (0..bs).map(|_| next() as u8).collect();
                    if next() % 3 != 0 {
                        b[..4].copy_from_slice(&JBD2_MAGIC.to_be_bytes());
                        b[4..8].copy_from_slice(&((next() % 6) as u32).to_be_bytes());
                        let tid = 10 + (next() % 3) as u32;
                        b[8..12].copy_from_slice(&tid.to_be_bytes());
                        if next() % 2 == 0 {
                            // Flags with LAST_TAG early so descriptors stay short.
                            b[16..20].copy_from_slice(&tag_flag::LAST_TAG.to_be_bytes());
                            b[18..20].copy_from_slice(&(tag_flag::LAST_TAG as u16).to_be_bytes());
                        }
                        if next() % 2 == 0 {
                            b[12..16].copy_from_slice(&((next() % 64) as u32).to_be_bytes());
                        }
                    }
                    j.write_j(jb, &b);
                }
                let start = 1 + (round % 47) as u32;
                j.write_sb(start, 10);
                let _ = j.recover();
            }
        }
    }
}
