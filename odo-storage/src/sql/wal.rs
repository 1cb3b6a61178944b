//! The pages a local SQLite commit wrote, read from the database's WAL,
//! as one log record; and the replay of log records into a database file.
//!
//! An object's database runs in WAL mode with automatic checkpoints off,
//! so each local commit appends its pages (frames) to the `-wal` file and
//! ends with a commit frame. After the commit, [`WalTail`] reads the frames
//! of that one transaction: a [`Record`], the after-images of the pages it
//! changed and the database's size after it. Records go to the shard's
//! log (its backend), and replaying records in order into the database
//! file (writing each page where it belongs, then cutting the file to the
//! size) is what a checkpoint does. Replay is idempotent from any state of
//! the file between the first replayed record and the last: each page ends
//! with its last written image.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use bytes::{Buf, BufMut, Bytes, BytesMut};

const WAL_HEADER: usize = 32;
const FRAME_HEADER: usize = 24;
const RECORD_VERSION: u8 = 2;
/// The largest record decoded (a bound on what a corrupt size may ask),
/// and so the most bytes of WAL frames one commit may take
/// ([`SqlOptions::max_turn_bytes`](super::SqlOptions::max_turn_bytes) at
/// most).
pub(crate) const MAX_RECORD_BYTES: usize = 1 << 30;

/// The pages one transaction wrote: what a log entry holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Record {
    /// When it committed (milliseconds since the Unix epoch).
    pub(crate) time_ms: u64,
    /// The page size.
    pub(crate) page_size: u32,
    /// The database's size in pages after the transaction.
    pub(crate) db_pages: u32,
    /// Page number (from 1) and the page's new content, in page order.
    pub(crate) pages: Vec<(u32, Bytes)>,
}

impl Record {
    /// The record's bytes in the log.
    pub(crate) fn encode(&self) -> Bytes {
        let size: usize = self.pages.iter().map(|(_, p)| 4 + p.len()).sum();
        let mut raw = BytesMut::with_capacity(20 + size);
        raw.put_u64(self.time_ms);
        raw.put_u32(self.page_size);
        raw.put_u32(self.db_pages);
        raw.put_u32(self.pages.len() as u32);
        for (number, page) in &self.pages {
            raw.put_u32(*number);
            raw.put_slice(page);
        }
        // Pages are mostly free space: LZ4 makes a small commit's record a
        // fraction of its pages.
        let compressed = lz4_flex::block::compress_prepend_size(&raw);
        let mut out = BytesMut::with_capacity(1 + compressed.len());
        out.put_u8(RECORD_VERSION);
        out.put_slice(&compressed);
        out.freeze()
    }

    /// Reads a record back; `None` if the bytes are not one.
    pub(crate) fn decode(mut bytes: Bytes) -> Option<Self> {
        if bytes.remaining() < 5 || bytes.get_u8() != RECORD_VERSION {
            return None;
        }
        let size = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        if size > MAX_RECORD_BYTES {
            return None;
        }
        let mut bytes = Bytes::from(lz4_flex::block::decompress_size_prepended(&bytes).ok()?);
        if bytes.remaining() < 20 {
            return None;
        }
        let time_ms = bytes.get_u64();
        let page_size = bytes.get_u32();
        let db_pages = bytes.get_u32();
        let count = bytes.get_u32() as usize;
        if page_size == 0 || bytes.remaining() != count.checked_mul(4 + page_size as usize)? {
            return None;
        }
        let mut pages = Vec::with_capacity(count);
        for _ in 0..count {
            let number = bytes.get_u32();
            pages.push((number, bytes.split_to(page_size as usize)));
        }
        Some(Self {
            time_ms,
            page_size,
            db_pages,
            pages,
        })
    }
}

/// Reads the frames each local commit appends to a database's WAL.
#[derive(Debug)]
pub(crate) struct WalTail {
    path: PathBuf,
    file: Option<File>,
    /// Bytes of the WAL already read (the end of the last commit read).
    offset: u64,
    page_size: u32,
    salts: [u8; 8],
}

impl WalTail {
    /// The WAL of the database at `db`.
    pub(crate) fn new(db: &Path) -> Self {
        let mut path = db.as_os_str().to_owned();
        path.push("-wal");
        Self {
            path: PathBuf::from(path),
            file: None,
            offset: 0,
            page_size: 0,
            salts: [0; 8],
        }
    }

    /// The WAL was emptied (a checkpoint truncated it): read from its start.
    pub(crate) fn reset(&mut self) {
        self.offset = 0;
    }

    /// Bytes of WAL written by commits read so far.
    pub(crate) fn len(&self) -> u64 {
        self.offset
    }

    /// The frames of the one transaction committed since the last call,
    /// which left the WAL holding `frames` frames (as SQLite's WAL hook
    /// said): those up to its commit frame, the last of them. Frames past
    /// it (a rolled-back transaction's spilled pages) are not read.
    ///
    /// A commit of more than `max_bytes` of frames (at most
    /// [`MAX_RECORD_BYTES`]) is an error of kind
    /// [`io::ErrorKind::FileTooLarge`], before it is read.
    pub(crate) fn next_commit(
        &mut self,
        time_ms: u64,
        frames: u64,
        max_bytes: u64,
    ) -> io::Result<Option<Record>> {
        let file = match &mut self.file {
            Some(file) => file,
            None => match File::open(&self.path) {
                Ok(file) => self.file.insert(file),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            },
        };
        let len = file.metadata()?.len();
        if self.offset == 0 {
            if len < WAL_HEADER as u64 {
                return Ok(None);
            }
            let mut header = [0u8; WAL_HEADER];
            file.seek(SeekFrom::Start(0))?;
            file.read_exact(&mut header)?;
            self.page_size = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
            self.salts.copy_from_slice(&header[16..24]);
            self.offset = WAL_HEADER as u64;
        }
        let frame = FRAME_HEADER as u64 + u64::from(self.page_size);
        let end = frames
            .checked_mul(frame)
            .and_then(|b| b.checked_add(WAL_HEADER as u64))
            .filter(|end| *end <= len && *end >= self.offset + frame)
            .ok_or_else(|| {
                io::Error::other(format!(
                    "the WAL of {len} bytes, read up to {}, cannot end a commit at frame {frames}",
                    self.offset
                ))
            })?;
        let want = end - self.offset;
        if want > max_bytes {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!("a commit of {want} bytes of pages"),
            ));
        }
        // Read into spare capacity: zeroing the buffer first cost as much
        // as the read.
        let mut bytes = Vec::with_capacity(want as usize);
        file.seek(SeekFrom::Start(self.offset))?;
        file.take(want).read_to_end(&mut bytes)?;
        if bytes.len() as u64 != want {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the WAL shrank while its last commit was read",
            ));
        }
        let mut pages: std::collections::BTreeMap<u32, Bytes> = Default::default();
        let bytes = Bytes::from(bytes);
        let mut at = 0usize;
        while at + frame as usize <= bytes.len() {
            let header = &bytes[at..at + FRAME_HEADER];
            if header[8..16] != self.salts {
                break;
            }
            let number = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
            let db_pages = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
            let page = bytes.slice(at + FRAME_HEADER..at + frame as usize);
            pages.insert(number, page);
            at += frame as usize;
            if db_pages != 0 {
                self.offset += at as u64;
                pages.retain(|number, _| *number <= db_pages);
                return Ok(Some(Record {
                    time_ms,
                    page_size: self.page_size,
                    db_pages,
                    pages: pages.into_iter().collect(),
                }));
            }
        }
        Err(io::Error::other(
            "the WAL holds no commit frame after the last one read",
        ))
    }
}

/// Writes records into the database file at `db`, in order, as a
/// checkpoint would (no sync: the caller decides).
pub(crate) fn replay(db: &Path, records: &[Record]) -> io::Result<()> {
    use std::io::Write;
    if records.is_empty() {
        return Ok(());
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(db)?;
    for record in records {
        let size = u64::from(record.page_size);
        for (number, page) in &record.pages {
            let Some(index) = number.checked_sub(1) else {
                return Err(io::Error::other("a log record holds page 0"));
            };
            file.seek(SeekFrom::Start(u64::from(index) * size))?;
            file.write_all(page)?;
        }
        file.set_len(u64::from(record.db_pages) * size)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_compressed_and_garbage_is_no_record() {
        let mut page = vec![0u8; 4096];
        page[..5].copy_from_slice(b"hello");
        page[4000..4003].copy_from_slice(b"end");
        let record = Record {
            time_ms: 42,
            page_size: 4096,
            db_pages: 3,
            pages: vec![(1, Bytes::from(page.clone())), (3, Bytes::from(page))],
        };
        let encoded = record.encode();
        assert!(encoded.len() < 1024, "{} bytes", encoded.len());
        assert_eq!(Record::decode(encoded.clone()), Some(record));
        for garbage in [
            Bytes::new(),
            Bytes::from_static(&[RECORD_VERSION, 0xff, 0xff, 0xff, 0x7f, 1, 2]),
            encoded.slice(..encoded.len() - 3),
            Bytes::from_static(b"\x01not a record at all"),
        ] {
            assert_eq!(Record::decode(garbage), None);
        }
    }
}
