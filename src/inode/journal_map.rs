//! The file system's side of its internal journal: finding the journal inode's blocks. Writing the
//! log is the journal layer's job (`crate::journal::commit`).

use crate::errno::Result;
use crate::journal::commit::JournalWriter;
use crate::volume::Volume;

impl Volume {
    /// Map journal inode `jino` and load its journal.
    pub(crate) fn load_journal(&self, jino: u64) -> Result<JournalWriter> {
        let inode = self.read_inode(jino)?;
        let bs = self.block_size as u64;
        let nblocks = inode.size / bs;
        if nblocks > self.sb.blocks_count {
            return Err(crate::corrupt!(
                "journal inode {jino}: size {} is larger than the file system",
                inode.size
            ));
        }
        let mut map = Vec::with_capacity(nblocks as usize);
        let mut l = 0u64;
        while l < nblocks {
            let m = self.map_block(jino, &inode, l)?;
            match m.status.pblk() {
                Some(pblk) => map.extend((0..m.len.min(nblocks - l)).map(|i| pblk + i)),
                None => {
                    return Err(crate::corrupt!(
                        "journal inode {jino} has a hole at block {l}"
                    ));
                }
            }
            l += m.len;
        }
        JournalWriter::load(self.dev.as_ref(), self.block_size, map)
            .map_err(|e| crate::corrupt!("journal inode {jino}: {e}"))
    }
}
