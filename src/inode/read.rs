//! Reading inodes from the inode tables, with checksum verification.

use crate::errno::Result;
use crate::ondisk::inode::{Inode, flags, inode_checksum, inode_csum_seed, stored_inode_checksum};
use crate::ondisk::superblock::incompat;
use crate::volume::Ino;
use crate::volume::Volume;

impl Volume {
    /// Where inode `ino` lives: (block, byte offset in the block).
    pub(crate) fn inode_location(&self, ino: Ino) -> Result<(u64, usize)> {
        if ino == 0 || ino > self.sb.inodes_count as u64 {
            return Err(crate::corrupt!("inode number {ino} is out of range"));
        }
        let idx = ino - 1;
        let group = (idx / self.sb.inodes_per_group as u64) as usize;
        let index = idx % self.sb.inodes_per_group as u64;
        let byte = index * self.sb.inode_size as u64;
        Ok((
            self.itables[group] + byte / self.block_size as u64,
            (byte % self.block_size as u64) as usize,
        ))
    }

    /// Read and verify inode `ino`.
    pub(crate) fn read_inode(&self, ino: Ino) -> Result<Inode> {
        let (block, off) = self.inode_location(ino)?;
        let data = self.read_meta_block(block)?;
        let raw = &data[off..off + self.sb.inode_size as usize];
        if self.sb.has_metadata_csum() {
            let gen_ = crate::ondisk::le::u32_at(raw, 0x64);
            let seed = inode_csum_seed(self.csum_seed, ino as u32, gen_);
            let want = inode_checksum(seed, raw);
            let have = stored_inode_checksum(raw);
            if want != have {
                return Err(crate::corrupt!(
                    "inode {ino} checksum mismatch (stored 0x{have:08x}, computed 0x{want:08x})"
                ));
            }
        }
        let mut inode = Inode::parse(raw).map_err(|e| crate::corrupt!("inode {ino}: {e}"))?;
        if inode.links_count == 0 && inode.mode == 0 {
            return Err(crate::corrupt!("inode {ino} is not in use"));
        }
        if (inode.has_flag(flags::ENCRYPT) || inode.has_flag(flags::CASEFOLD))
            && !self.sb.has_incompat(incompat::ENCRYPT | incompat::CASEFOLD)
        {
            return Err(crate::corrupt!(
                "inode {ino} has encryption/casefold flags on a file system without them"
            ));
        }
        // Users see i_size; the disk holds i_disksize until writeback completes.
        if inode.is_reg()
            && let Some(size) = self.inodes.size(ino)
        {
            inode.size = size;
        }
        Ok(inode)
    }

    /// The checksum seed of an inode's own metadata blocks (extent, directory blocks).
    pub(crate) fn inode_seed(&self, ino: Ino, inode: &Inode) -> u32 {
        inode_csum_seed(self.csum_seed, ino as u32, inode.generation)
    }
}
