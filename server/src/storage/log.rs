//! The commit log: where a write becomes durable, and where it gets its
//! revision (see `docs/design/write-path.md`).
//!
//! One append-only log for all shards, in segment files named by the first
//! revision they hold. Each shard writer's batch is one **frame**:
//! `[u32 payload length][u32 crc32 of payload][payload]`, payload
//! `[u64 first revision][u16 shard | append-start bit][u32 record count]
//! [records]`, a record
//! `[u8 op][u16 key length][key][u32 value length][value]` (`op` 0 put,
//! 1 delete without a value; 2 a put that expires and 3 an expiry, each
//! with a `[u64 instant]` after). A record's revision is its frame's first
//! revision plus its index, so the log order is the global order of writes.
//!
//! Frames are appended by one thread (`LogWriter`), which writes every
//! frame queued since its last sync with one `write` and one `fdatasync`:
//! the commit point for all of them. Segments are filled with zeros before
//! use (`segment`), so a sync flushes data only. On open, the segments are
//! read back; the first frame that is short or fails its checksum is the
//! torn tail of a batch that was never acknowledged, and everything from
//! there to the end of the segment is zeroed again: unless an intact frame
//! that starts a later append follows it. Appends are sequential (the next
//! starts only after the previous one's sync returned), so such a frame
//! proves the damaged one was acknowledged, and the log refuses to open
//! rather than drop acknowledged writes (see `check_tail`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use bytes::Bytes;

use super::manifest;
use super::segment::{self, Spare, SPARE_NAME};
use super::StoreError;

/// Directory of the log inside the data directory.
pub const LOG_DIR: &str = "log";
/// The largest segment: a new one is started when the next batch would
/// not fit in the current one's zero-filled space (see `segment`).
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// The first segment after a start, made while the start waits: small,
/// since most logs are short-lived between restarts. Each later segment is
/// four times the size of the one before, up to `SEGMENT_BYTES`.
const FIRST_SEGMENT_BYTES: u64 = 1024 * 1024;
/// Frame header: payload length and checksum.
const FRAME_HEADER: usize = 8;
/// Payload header: first revision, shard, record count.
const PAYLOAD_HEADER: usize = 8 + 2 + 4;

/// Longest key a record can carry: its length is a `u16`. The server's
/// `limits.max_key_bytes` may not exceed it, and the encoder refuses
/// anything longer rather than frame a truncated length under a valid CRC
/// (which recovery would take for a torn tail, dropping every later frame).
pub const MAX_KEY_BYTES: usize = u16::MAX as usize;
/// Largest value a record can carry: its length is a `u32`.
const MAX_VALUE_BYTES: usize = u32::MAX as usize;

/// Set in a frame's shard field when the frame is the first of its append.
/// Shard numbers stay far below it (`storage.shards` is at most 1024).
const APPEND_START: u16 = 0x8000;

/// The shard field of a transaction frame, whose parts name their shards
/// (see "Transaction frames" in the design note). Below `APPEND_START`,
/// far above any shard.
const TXN_FRAME: u16 = 0x7fff;

const OP_PUT: u8 = 0;
const OP_DELETE: u8 = 1;
/// A put whose value expires: `[u64 expires at]` follows the value.
const OP_PUT_EXPIRING: u8 = 2;
/// The removal of a value that expired: `[u64 expired at]`, no value.
const OP_EXPIRE: u8 = 3;

/// One change to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// The key.
    pub key: String,
    /// The new value; `None` deletes the key.
    pub value: Option<Bytes>,
    /// When the value expires (ms since the Unix epoch), if it does; on a
    /// delete, that this is the removal of a value that expired then.
    pub expires_at: Option<u64>,
}

impl LogRecord {
    /// A put of `value` that does not expire.
    pub fn put(key: String, value: Bytes) -> Self {
        Self {
            key,
            value: Some(value),
            expires_at: None,
        }
    }

    /// The state this record leaves its key in once logged at `revision`
    /// (`None`: deleted).
    pub fn state_at(&self, revision: u64) -> Option<std::sync::Arc<super::store::StoredValue>> {
        self.value.as_ref().map(|json| {
            std::sync::Arc::new(super::store::StoredValue {
                version: revision,
                json: json.clone(),
                expires_at: self.expires_at,
            })
        })
    }

    /// A delete of `key`.
    pub fn delete(key: String) -> Self {
        Self {
            key,
            value: None,
            expires_at: None,
        }
    }

    /// The removal of `key`'s value, which expired at `at`.
    pub fn expiry(key: String, at: u64) -> Self {
        Self {
            key,
            value: None,
            expires_at: Some(at),
        }
    }

    /// Whether this removes a value because it expired.
    pub fn is_expiry(&self) -> bool {
        self.value.is_none() && self.expires_at.is_some()
    }
}

/// Key and value bytes of `records`: what the memtable's and an append's
/// byte bounds count.
pub fn payload_bytes(records: &[LogRecord]) -> usize {
    records
        .iter()
        .map(|r| r.key.len() + r.value.as_ref().map_or(0, |v| v.len()))
        .sum()
}

/// One shard's batch, as read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Revision of the first record.
    pub first_revision: u64,
    /// The shard whose writer logged it.
    pub shard: u16,
    /// Whether it is the first frame of its append (write and sync).
    pub starts_append: bool,
    /// Its records, in order.
    pub records: Vec<LogRecord>,
    /// For a unit (a transaction frame), the revision of its last record,
    /// past `records` when this is one of its parts; `None` for a batch,
    /// whose records are units each.
    pub unit_last: Option<u64>,
}

/// An I/O error on `path`; a full disk is told apart, as the one failure
/// that passes by itself once space is freed.
fn io(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |e| {
        let message = format!("{}: {e}", path.display());
        match e.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                StoreError::NoSpace(message)
            }
            _ => StoreError::Io(message),
        }
    }
}

/// One frame to log.
#[derive(Debug, Clone)]
pub struct FrameParts<'a> {
    /// Its records by shard: one shard's batch, or a transaction's records
    /// (ascending, each shard once).
    pub parts: Vec<(u16, &'a [LogRecord])>,
    /// Whether it was committed as a whole (a transaction) rather than as
    /// a batch of writes that happen to share a frame. A unit is written
    /// as a transaction frame even on one shard, so that a reader of the
    /// log knows it (see "Units" in the design note).
    pub unit: bool,
}

/// Appends the encoding of one frame to `out`: an ordinary frame for one
/// part that is not a unit, a transaction frame otherwise.
///
/// Refuses (writing nothing) a record whose key or value is longer than
/// its length field can say.
pub fn encode_frame(
    out: &mut Vec<u8>,
    first_revision: u64,
    parts: &[(u16, &[LogRecord])],
    unit: bool,
    starts_append: bool,
) -> Result<(), StoreError> {
    for (shard, records) in parts {
        if *shard >= TXN_FRAME {
            return Err(StoreError::Corrupt(format!(
                "shard {shard} cannot be logged"
            )));
        }
        check_lengths(records)?;
    }
    let plain = !unit && parts.len() == 1;
    let (shard, head_count) = match parts {
        [(shard, records)] if plain => (*shard, records.len()),
        _ => (TXN_FRAME, parts.len()),
    };
    let shard = if starts_append {
        shard | APPEND_START
    } else {
        shard
    };
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER]);
    out.extend_from_slice(&first_revision.to_le_bytes());
    out.extend_from_slice(&shard.to_le_bytes());
    out.extend_from_slice(&(head_count as u32).to_le_bytes());
    match parts {
        [(_, records)] if plain => encode_records(out, records),
        _ => {
            for (shard, records) in parts {
                out.extend_from_slice(&shard.to_le_bytes());
                out.extend_from_slice(&(records.len() as u32).to_le_bytes());
                encode_records(out, records);
            }
        }
    }
    let payload_len = (out.len() - start - FRAME_HEADER) as u32;
    let crc = crc32fast::hash(&out[start + FRAME_HEADER..]);
    out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn check_lengths(records: &[LogRecord]) -> Result<(), StoreError> {
    for record in records {
        if record.key.len() > MAX_KEY_BYTES {
            return Err(StoreError::KeyTooLong(record.key.len()));
        }
        if record
            .value
            .as_ref()
            .is_some_and(|v| v.len() > MAX_VALUE_BYTES)
        {
            return Err(StoreError::Unavailable(
                "a value longer than a log record can carry".into(),
            ));
        }
    }
    Ok(())
}

fn encode_records(out: &mut Vec<u8>, records: &[LogRecord]) {
    for record in records {
        out.push(match (&record.value, record.expires_at) {
            (Some(_), None) => OP_PUT,
            (Some(_), Some(_)) => OP_PUT_EXPIRING,
            (None, None) => OP_DELETE,
            (None, Some(_)) => OP_EXPIRE,
        });
        out.extend_from_slice(&(record.key.len() as u16).to_le_bytes());
        out.extend_from_slice(record.key.as_bytes());
        if let Some(value) = &record.value {
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
        }
        if let Some(at) = record.expires_at {
            out.extend_from_slice(&at.to_le_bytes());
        }
    }
}

/// A cursor over bytes that refuses to read past the end.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(out)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// Decodes the frame at the start of `bytes`: its records as one frame
/// per shard (a transaction frame has several) and its encoded length, or
/// `None` when it is short or damaged (a torn tail).
pub fn decode_frame(bytes: &[u8]) -> Option<(Vec<Frame>, usize)> {
    let mut c = Cursor { bytes, at: 0 };
    let len = c.u32()? as usize;
    let crc = c.u32()?;
    let payload = c.take(len)?;
    if len < PAYLOAD_HEADER || crc32fast::hash(payload) != crc {
        return None;
    }
    let mut p = Cursor {
        bytes: payload,
        at: 0,
    };
    let first_revision = p.u64()?;
    let shard_field = p.u16()?;
    let count = p.u32()? as usize;
    let starts_append = shard_field & APPEND_START != 0;
    let shard = shard_field & !APPEND_START;
    let mut frames = Vec::new();
    let mut revision = first_revision;
    if shard == TXN_FRAME {
        for _ in 0..count {
            let shard = p.u16()?;
            let records = p.u32().and_then(|n| decode_records(&mut p, n as usize))?;
            let next = revision.checked_add(records.len() as u64)?;
            frames.push(Frame {
                first_revision: revision,
                shard,
                starts_append: starts_append && frames.is_empty(),
                records,
                unit_last: None,
            });
            revision = next;
        }
        let unit_last = revision.checked_sub(1);
        for frame in &mut frames {
            frame.unit_last = unit_last;
        }
    } else {
        frames.push(Frame {
            first_revision,
            shard,
            starts_append,
            records: decode_records(&mut p, count)?,
            unit_last: None,
        });
    }
    if p.at != payload.len() {
        return None;
    }
    Some((frames, FRAME_HEADER + len))
}

/// `count` records at the cursor.
fn decode_records(p: &mut Cursor<'_>, count: usize) -> Option<Vec<LogRecord>> {
    let mut records = Vec::with_capacity(count.min(p.bytes.len()));
    for _ in 0..count {
        let op = p.take(1)?[0];
        let key_len = p.u16()? as usize;
        let key = String::from_utf8(p.take(key_len)?.to_vec()).ok()?;
        let (value, expires_at) = match op {
            OP_PUT | OP_PUT_EXPIRING => {
                let value_len = p.u32()? as usize;
                let value = Bytes::copy_from_slice(p.take(value_len)?);
                let expires_at = match op {
                    OP_PUT_EXPIRING => Some(p.u64()?),
                    _ => None,
                };
                (Some(value), expires_at)
            }
            OP_DELETE => (None, None),
            OP_EXPIRE => (None, Some(p.u64()?)),
            _ => return None,
        };
        records.push(LogRecord {
            key,
            value,
            expires_at,
        });
    }
    Some(records)
}

/// Deletes what a crash or a failed fill left in the log directory of
/// `data_dir` that holds no frame. Runs before anything else opens, so
/// such leftovers never keep a server on a full disk from starting.
pub fn remove_leftovers(data_dir: &Path) -> Result<(), StoreError> {
    let dir = data_dir.join(LOG_DIR);
    segment::remove_leftover(&dir).map_err(io(&dir))
}

/// The log's files.
pub struct CommitLog {
    dir: PathBuf,
    /// Segments, oldest first: (first revision, path).
    segments: Vec<(u64, PathBuf)>,
    /// The newest segment, positioned where the next frame goes.
    file: File,
    /// Bytes of frames in the newest segment.
    file_bytes: u64,
    /// Bytes the newest segment was filled to (with zeros) before use.
    capacity: u64,
    /// The next segment, being prepared once the newest is half full.
    spare: Option<Spare>,
    /// The revision the next record gets.
    next_revision: u64,
}

/// How much of the applied log to keep for the change feed: segments go,
/// oldest first, while the log is larger than `bytes` or a segment holds
/// only revisions older than the newest `revisions` (0: no bound by count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Most bytes of log segments kept.
    pub bytes: u64,
    /// Revisions kept at least, unless `bytes` runs out first (0: any).
    pub revisions: u64,
}

impl Retention {
    /// Keeps nothing already applied.
    pub const NONE: Retention = Retention {
        bytes: 0,
        revisions: 0,
    };
}

/// The log's segment files in `dir`, oldest first, without touching
/// anything: for readers beside the log writer (the change feed).
pub fn segment_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(first) = first {
            segments.push((first, path));
        }
    }
    segments.sort_unstable();
    Ok(segments)
}

/// Every intact frame of the segment at `path`, in order. The newest
/// segment may be being written: a frame still being written fails its
/// checksum and ends the read (the caller reads no revision past the
/// committed one in any case).
pub fn read_frames(path: &Path) -> std::io::Result<Vec<Frame>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    Ok(decode_frames(&bytes).0)
}

/// The intact frames at the start of `bytes`, and where they end.
fn decode_frames(bytes: &[u8]) -> (Vec<Frame>, usize) {
    let mut frames = Vec::new();
    let mut at = 0;
    while let Some((decoded, len)) = decode_frame(&bytes[at..]) {
        frames.extend(decoded);
        at += len;
    }
    (frames, at)
}

/// What opening the log found.
pub struct Recovered {
    /// The log, ready to append.
    pub log: CommitLog,
    /// Every intact frame, in log order, for replay.
    pub frames: Vec<Frame>,
}

fn segment_name(first_revision: u64) -> String {
    format!("{first_revision:020}.wal")
}

/// One segment as read back: its frames, where they end, and where what
/// follows them stops being zeros (see `segment::dirty_end`).
struct ReadSegment {
    frames: Vec<Frame>,
    end: u64,
    len: u64,
    dirty_end: Option<u64>,
    /// The bytes from `end` to `dirty_end`, when they are not all zeros.
    tail: Vec<u8>,
}

fn read_segment(path: &Path) -> Result<ReadSegment, StoreError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io(path))?;
    let (frames, at) = decode_frames(&bytes);
    let dirty_end = segment::dirty_end(&bytes[at..]).map(|d| at + d);
    Ok(ReadSegment {
        frames,
        end: at as u64,
        len: bytes.len() as u64,
        dirty_end: dirty_end.map(|d| d as u64),
        tail: dirty_end.map_or_else(Vec::new, |d| bytes[at..d].to_vec()),
    })
}

/// Intact frames in `rest`, the bytes after a segment's first damaged or
/// short frame, whose revisions follow `last` (the newest intact one
/// before). Every offset is tried, since the damage may be in a length:
/// a cheap look at the revision field first (each record takes at least
/// 7 bytes, so no revision in `rest` exceeds `last + rest.len()`), then
/// the checksum.
fn intact_frames_in(rest: &[u8], last: u64) -> Vec<(usize, Frame)> {
    let highest = last.saturating_add(rest.len() as u64);
    let mut found = Vec::new();
    let mut at = 1;
    while at + FRAME_HEADER + PAYLOAD_HEADER <= rest.len() {
        let head = &rest[at + FRAME_HEADER..at + FRAME_HEADER + 8];
        let revision = u64::from_le_bytes(head.try_into().unwrap_or([0; 8]));
        if revision > last && revision <= highest {
            if let Some((frames, len)) = decode_frame(&rest[at..]) {
                found.extend(frames.into_iter().map(|frame| (at, frame)));
                at += len;
                continue;
            }
        }
        at += 1;
    }
    found
}

/// Decides what the non-zero bytes after the newest segment's last intact
/// frame are. An intact frame among them that starts an append proves the
/// damaged frame before it was acknowledged: refuse to open. Otherwise they
/// are the torn remains of the last append, never acknowledged: say so
/// (they are cleared when the log reopens).
fn check_tail(path: &Path, read: &ReadSegment, last: u64) -> Result<(), StoreError> {
    let later = intact_frames_in(&read.tail, last);
    if let Some((at, frame)) = later.iter().find(|(_, f)| f.starts_append) {
        return Err(StoreError::Corrupt(format!(
            "{}: the frame at byte {} is damaged, and a later append (revision {} at byte {}) \
             follows it, so acknowledged writes are damaged; see the README's \"Data directory\" \
             on how to start from what is intact",
            path.display(),
            read.end,
            frame.first_revision,
            read.end + *at as u64,
        )));
    }
    tracing::warn!(
        segment = %path.display(),
        at = read.end,
        bytes = read.tail.len(),
        intact_frames = later.len(),
        "clearing the torn tail of the last append, which was never acknowledged"
    );
    Ok(())
}

/// The segment files in `dir`, oldest first; deletes a spare segment that
/// a crash left half prepared.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str());
        if name == Some(SPARE_NAME) {
            std::fs::remove_file(&path).map_err(io(&path))?;
            continue;
        }
        if name.is_some_and(super::held::is_held_file) {
            continue;
        }
        match name
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            Some(first) => segments.push((first, path)),
            None => {
                return Err(StoreError::Corrupt(format!(
                    "{}: not a log segment",
                    path.display()
                )))
            }
        }
    }
    segments.sort();
    Ok(segments)
}

/// Opens the newest segment to write after its last frame, clearing the
/// remains of a torn write first.
fn reopen_last(path: &Path, read: &ReadSegment) -> Result<File, StoreError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io(path))?;
    if let Some(dirty) = read.dirty_end {
        // The torn tail of a batch that was never acknowledged.
        segment::zero_range(&mut file, read.end, dirty - read.end).map_err(io(path))?;
    }
    file.seek(SeekFrom::Start(read.end)).map_err(io(path))?;
    Ok(file)
}

impl CommitLog {
    /// Opens (creating if new) the log in `data_dir`, reads back every
    /// intact frame and clears a torn tail. `min_next_revision` is the floor
    /// for the next revision (the stores' applied revisions + 1), for a
    /// log whose segments were all trimmed.
    pub fn open(data_dir: &Path, min_next_revision: u64) -> Result<Recovered, StoreError> {
        Self::open_keeping(data_dir, min_next_revision, 0)
    }

    /// [`CommitLog::open`], keeping in `frames` only those with a record
    /// at or past `keep_from` (the older ones are in every store already,
    /// and a log kept for the change feed may be large).
    pub fn open_keeping(
        data_dir: &Path,
        min_next_revision: u64,
        keep_from: u64,
    ) -> Result<Recovered, StoreError> {
        let dir = data_dir.join(LOG_DIR);
        if !dir.exists() {
            manifest::create_dir_durably(&dir)?;
        }
        let mut segments = list_segments(&dir)?;
        let mut frames = Vec::new();
        // A segment is named by the first revision it holds (or will hold).
        let named = segments.last().map_or(0, |s| s.0);
        let mut next_revision = min_next_revision.max(named).max(1);
        let mut last = None;
        for (i, (_, path)) in segments.iter().enumerate() {
            let mut read = read_segment(path)?;
            if read.dirty_end.is_some() && i + 1 != segments.len() {
                return Err(StoreError::Corrupt(format!(
                    "{}: damaged at byte {}, and later segments follow",
                    path.display(),
                    read.end
                )));
            }
            for frame in &read.frames {
                next_revision =
                    next_revision.max(frame.first_revision + frame.records.len() as u64);
            }
            if read.dirty_end.is_some() {
                check_tail(path, &read, next_revision - 1)?;
            }
            read.frames
                .retain(|f| f.first_revision + f.records.len() as u64 > keep_from);
            frames.append(&mut read.frames);
            last = Some(read);
        }
        let (file, file_bytes, capacity) = match (segments.last(), last) {
            (Some((_, path)), Some(read)) => (reopen_last(path, &read)?, read.end, read.len),
            _ => {
                let path = dir.join(segment_name(next_revision));
                let file = new_segment(&dir, &path)?;
                segments.push((next_revision, path));
                (file, 0, FIRST_SEGMENT_BYTES)
            }
        };
        let log = CommitLog {
            dir,
            segments,
            file,
            file_bytes,
            capacity,
            spare: None,
            next_revision,
        };
        Ok(Recovered { log, frames })
    }

    /// The revision the next record gets.
    pub fn next_revision(&self) -> u64 {
        self.next_revision
    }

    /// Appends one frame per batch (`(shard, records)`), in order, with one
    /// write and one fdatasync; returns each batch's first revision. When
    /// this returns Ok, every record is durable.
    ///
    /// An error that [`StoreError::wrote_nothing`] left the log as it was
    /// (a batch it cannot frame, a new segment it could not make): the log
    /// takes appends again. Any other error is a failed write or sync.
    pub fn append(&mut self, batches: &[(u16, &[LogRecord])]) -> Result<Vec<u64>, StoreError> {
        let frames: Vec<FrameParts<'_>> = batches
            .iter()
            .map(|b| FrameParts {
                parts: vec![*b],
                unit: false,
            })
            .collect();
        self.append_frames(&frames)
    }

    /// Appends `frames` (each one shard's batch or one transaction) with
    /// one write and one sync; returns each frame's first revision.
    pub fn append_frames(&mut self, frames: &[FrameParts<'_>]) -> Result<Vec<u64>, StoreError> {
        let mut buf = Vec::new();
        let mut firsts = Vec::with_capacity(frames.len());
        let mut revision = self.next_revision;
        for (i, frame) in frames.iter().enumerate() {
            encode_frame(&mut buf, revision, &frame.parts, frame.unit, i == 0)?;
            firsts.push(revision);
            revision += frame.parts.iter().map(|(_, r)| r.len() as u64).sum::<u64>();
        }
        if self.file_bytes > 0 && self.file_bytes + buf.len() as u64 > self.capacity {
            self.roll().map_err(not_written)?;
        }
        if let Err(e) = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data())
        {
            let path = self
                .segments
                .last()
                .map(|s| s.1.as_path())
                .unwrap_or(&self.dir);
            // Whatever the cause, part of the batch may be on disk.
            return Err(StoreError::Io(format!("{}: {e}", path.display())));
        }
        self.file_bytes += buf.len() as u64;
        self.next_revision = revision;
        if self.spare.is_none() && self.file_bytes * 2 > self.capacity {
            self.prepare_next();
        }
        Ok(firsts)
    }

    /// Starts filling the next segment: four times the size of this one,
    /// up to `SEGMENT_BYTES`, so the fill takes a fraction of the time the
    /// rest of this one lasts. Without it, `roll` makes a small one itself.
    fn prepare_next(&mut self) {
        let bytes = self
            .capacity
            .saturating_mul(4)
            .clamp(FIRST_SEGMENT_BYTES, SEGMENT_BYTES);
        match Spare::start(&self.dir, bytes) {
            Ok(spare) => self.spare = Some(spare),
            Err(e) => tracing::warn!(error = %e, "cannot prepare the next log segment"),
        }
    }

    /// Starts a new segment for the records to come (unless the current
    /// one is still empty and named for them).
    fn roll(&mut self) -> Result<(), StoreError> {
        if self.file_bytes == 0 && self.segments.last().map(|s| s.0) == Some(self.next_revision) {
            return Ok(());
        }
        let path = self.dir.join(segment_name(self.next_revision));
        let prepared = self.spare.take().map(|spare| {
            let bytes = spare.bytes;
            spare.finish(&path).map(|file| (file, bytes))
        });
        let (file, capacity) = match prepared {
            Some(Ok(ready)) => {
                manifest::sync_dir(&self.dir)?;
                ready
            }
            Some(Err(e)) => {
                // Its fill failed (often a full disk): the small one may fit.
                tracing::warn!(error = %e, "the prepared log segment is not usable; making a small one");
                (new_segment(&self.dir, &path)?, FIRST_SEGMENT_BYTES)
            }
            None => (new_segment(&self.dir, &path)?, FIRST_SEGMENT_BYTES),
        };
        self.file = file;
        self.file_bytes = 0;
        self.capacity = capacity;
        self.segments.push((self.next_revision, path));
        Ok(())
    }

    /// Deletes the segments whose every record is at or below `applied`
    /// (applied to its store in every shard). The newest segment stays.
    pub fn trim(&mut self, applied: u64) -> Result<(), StoreError> {
        while self.segments.len() > 1 && self.segments[1].0 <= applied.saturating_add(1) {
            let (_, path) = self.segments.remove(0);
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
        manifest::sync_dir(&self.dir)
    }

    /// Starts a new segment once every record is applied (after
    /// recovery), deleting the applied segments `retention` does not keep.
    pub fn reset(&mut self, retention: Retention) -> Result<(), StoreError> {
        self.roll()?;
        let applied = self.next_revision.saturating_sub(1);
        self.trim(applied.min(self.retention_floor(retention)))
    }

    /// The highest revision whose segment `retention` lets go: every
    /// segment wholly at or below it may be deleted once applied. Counted
    /// from the newest segment back; the newest always stays.
    pub fn retention_floor(&self, retention: Retention) -> u64 {
        let head = self.next_revision.saturating_sub(1);
        let oldest_wanted = match retention.revisions {
            0 => 0,
            n => head.saturating_sub(n).saturating_add(1),
        };
        let mut kept = 0u64;
        for i in (0..self.segments.len()).rev() {
            let path = &self.segments[i].1;
            let Some(next_first) = self.segments.get(i + 1).map(|s| s.0) else {
                kept = kept.saturating_add(self.capacity);
                continue;
            };
            let bytes = std::fs::metadata(path).map_or(0, |m| m.len());
            let too_old = next_first <= oldest_wanted;
            if too_old || kept.saturating_add(bytes) > retention.bytes {
                return next_first.saturating_sub(1);
            }
            kept = kept.saturating_add(bytes);
        }
        0
    }

    /// The first revision the log still holds (or, if it holds none, the
    /// next it will).
    pub fn oldest_revision(&self) -> u64 {
        self.segments.first().map_or(self.next_revision, |s| s.0)
    }
}

/// A failure to make a new segment: nothing was written, so the log stays
/// usable and the next append tries again.
fn not_written(e: StoreError) -> StoreError {
    match e {
        StoreError::Io(message) | StoreError::Corrupt(message) => StoreError::Unavailable(message),
        other => other,
    }
}

/// A small segment made now, on the writer's own thread, with its name
/// made durable: for a new log, and when no prepared one is ready.
fn new_segment(dir: &Path, path: &Path) -> Result<File, StoreError> {
    let file = segment::create_zeroed(path, FIRST_SEGMENT_BYTES, &AtomicBool::new(false)).map_err(
        |e| {
            // A part-filled file holds no frame; it only takes space.
            let _ = std::fs::remove_file(path);
            io(path)(e)
        },
    )?;
    manifest::sync_dir(dir)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn put(key: &str, value: &str) -> LogRecord {
        LogRecord::put(key.into(), Bytes::copy_from_slice(value.as_bytes()))
    }

    /// A key whose length a record's u16 cannot say is refused before
    /// anything is written, not framed with a truncated length under a
    /// valid checksum (which recovery would take for a torn tail).
    #[test]
    fn keys_longer_than_a_record_carries_are_refused_unwritten() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = CommitLog::open(dir.path(), 1).unwrap().log;
        let long = put(&"k".repeat(MAX_KEY_BYTES + 1), "1");
        let err = log.append(&[(0, &[long][..])]).unwrap_err();
        assert!(matches!(err, StoreError::KeyTooLong(65_536)), "{err}");
        assert!(err.wrote_nothing());
        // The log goes on, and what it holds reads back.
        let longest = put(&"k".repeat(MAX_KEY_BYTES), "2");
        assert_eq!(log.append(&[(0, &[longest.clone()][..])]).unwrap(), [1]);
        drop(log);
        let frames = CommitLog::open(dir.path(), 1).unwrap().frames;
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].records, [longest]);
    }

    #[test]
    fn frames_round_trip_and_damage_is_detected() {
        let records = vec![
            put("a", "1"),
            LogRecord::delete("é".into()),
            LogRecord {
                expires_at: Some(1_800_000_000_000),
                ..put("ttl", "1")
            },
            LogRecord::expiry("gone".into(), 1_700_000_000_000),
        ];
        assert!(records[3].is_expiry() && !records[1].is_expiry());
        let mut buf = Vec::new();
        encode_frame(&mut buf, 7, &[(3, &records[..])], false, true).unwrap();
        let (mut frames, len) = decode_frame(&buf).unwrap();
        let frame = frames.remove(0);
        assert_eq!(len, buf.len());
        assert_eq!(
            (frame.first_revision, frame.shard, frame.records),
            (7, 3, records)
        );
        for cut in 0..buf.len() {
            assert!(decode_frame(&buf[..cut]).is_none(), "cut at {cut}");
        }
        for flip in 0..buf.len() {
            let mut bad = buf.clone();
            bad[flip] ^= 0x40;
            if let Some((frames, _)) = decode_frame(&bad) {
                panic!("byte {flip} flipped, still decoded {frames:?}");
            }
        }
    }

    /// A transaction frame reads back as one frame per shard, revisions
    /// running on through its parts; any damage loses all of it.
    #[test]
    fn transaction_frames_read_back_per_shard_and_whole_or_not_at_all() {
        let a = [put("a", "1"), put("b", "2")];
        let b = [LogRecord::delete("c".into())];
        let mut buf = Vec::new();
        encode_frame(&mut buf, 10, &[(0, &a[..]), (3, &b[..])], true, true).unwrap();
        let (frames, len) = decode_frame(&buf).unwrap();
        assert_eq!(len, buf.len());
        let read: Vec<(u64, u16, bool, usize, Option<u64>)> = frames
            .iter()
            .map(|f| {
                (
                    f.first_revision,
                    f.shard,
                    f.starts_append,
                    f.records.len(),
                    f.unit_last,
                )
            })
            .collect();
        assert_eq!(
            read,
            [(10, 0, true, 2, Some(12)), (12, 3, false, 1, Some(12))]
        );
        assert_eq!(frames[1].records, b);
        for cut in 0..buf.len() {
            assert!(decode_frame(&buf[..cut]).is_none(), "cut at {cut}");
        }
        for flip in 0..buf.len() {
            let mut bad = buf.clone();
            bad[flip] ^= 0x40;
            assert!(decode_frame(&bad).is_none(), "byte {flip} flipped");
        }
        // Through the log: with ordinary frames around it, and reopened.
        let dir = tempfile::tempdir().unwrap();
        let mut log = CommitLog::open(dir.path(), 1).unwrap().log;
        let firsts = log
            .append_frames(&[
                FrameParts {
                    parts: vec![(1, &b[..])],
                    unit: false,
                },
                FrameParts {
                    parts: vec![(0, &a[..]), (2, &b[..])],
                    unit: true,
                },
                FrameParts {
                    parts: vec![(2, &a[..])],
                    unit: false,
                },
                FrameParts {
                    parts: vec![(1, &a[..])],
                    unit: true,
                },
            ])
            .unwrap();
        assert_eq!(firsts, [1, 2, 5, 7]);
        drop(log);
        let recovered = CommitLog::open(dir.path(), 1).unwrap();
        let read: Vec<(u64, u16, Option<u64>)> = recovered
            .frames
            .iter()
            .map(|f| (f.first_revision, f.shard, f.unit_last))
            .collect();
        // A batch's records are units each; a transaction is one unit,
        // also on one shard.
        assert_eq!(
            read,
            [
                (1, 1, None),
                (2, 0, Some(4)),
                (4, 2, Some(4)),
                (5, 2, None),
                (7, 1, Some(8))
            ]
        );
        assert_eq!(recovered.log.next_revision(), 9);
    }

    /// Writes `bytes` where the next frame of `log`'s newest segment goes,
    /// as a write that the crash cut short would have left them.
    fn leave_behind(log: &CommitLog, bytes: &[u8]) {
        use std::os::unix::fs::FileExt;
        let path = &log.segments.last().unwrap().1;
        let f = OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(bytes, log.file_bytes).unwrap();
    }

    fn revisions(dir: &Path) -> Vec<u64> {
        let recovered = CommitLog::open(dir, 1).unwrap();
        recovered.frames.iter().map(|f| f.first_revision).collect()
    }

    #[test]
    fn appends_survive_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = CommitLog::open(dir.path(), 1).unwrap().log;
        let a = [put("a", "1"), put("b", "2")];
        let b = [put("c", "3")];
        assert_eq!(log.append(&[(0, &a), (1, &b)]).unwrap(), [1, 3]);
        assert_eq!(log.append(&[(2, &b)]).unwrap(), [4]);
        // A crash in the middle of the next append.
        let mut torn = Vec::new();
        encode_frame(&mut torn, 5, &[(0, &[put("d", "4")][..])], false, true).unwrap();
        leave_behind(&log, &torn[..torn.len() - 3]);
        drop(log);
        let recovered = CommitLog::open(dir.path(), 1).unwrap();
        let revisions: Vec<u64> = recovered.frames.iter().map(|f| f.first_revision).collect();
        assert_eq!(revisions, [1, 3, 4]);
        let mut log = recovered.log;
        assert_eq!(log.next_revision(), 5);
        assert_eq!(log.append(&[(0, &b)]).unwrap(), [5]);
        drop(log);
        assert_eq!(CommitLog::open(dir.path(), 1).unwrap().frames.len(), 4);
    }

    /// Damage inside an acknowledged frame is told apart from a torn
    /// tail when a later append follows it: the log refuses to open
    /// instead of dropping every acknowledged write after it, whether the
    /// damage is in the payload or in the length itself.
    #[test]
    fn damage_before_a_later_append_refuses_to_open() {
        for damage_at in [0usize, 20] {
            let dir = tempfile::tempdir().unwrap();
            let mut log = CommitLog::open(dir.path(), 1).unwrap().log;
            log.append(&[(0, &[put("a", "1")])]).unwrap();
            let damaged_frame = log.file_bytes;
            log.append(&[(0, &[put("b", "2")]), (1, &[put("c", "3")])])
                .unwrap();
            log.append(&[(1, &[put("d", "4")])]).unwrap();
            let path = log.segments.last().unwrap().1.clone();
            drop(log);
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[damaged_frame as usize + damage_at] ^= 0x40;
            std::fs::write(&path, &bytes).unwrap();
            let err = CommitLog::open(dir.path(), 1).err().unwrap().to_string();
            assert!(
                err.contains("acknowledged writes are damaged") && err.contains("revision 4"),
                "{err}"
            );
            // Nothing was changed: the bytes are there for an operator.
            assert_eq!(std::fs::read(&path).unwrap(), bytes);
        }
    }

    #[test]
    fn an_unacknowledged_frame_cannot_come_back_after_the_torn_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = CommitLog::open(dir.path(), 1).unwrap().log;
        log.append(&[(0, &[put("a", "1")])]).unwrap();
        // A two-frame batch of which only the second reached the disk
        // whole: the first is damaged, the second intact.
        let mut lost = Vec::new();
        encode_frame(&mut lost, 2, &[(0, &[put("b", "2")][..])], false, true).unwrap();
        let damaged = lost.len();
        lost[damaged - 1] ^= 1;
        encode_frame(&mut lost, 3, &[(1, &[put("c", "3")][..])], false, false).unwrap();
        leave_behind(&log, &lost);
        drop(log);
        let mut log = CommitLog::open(dir.path(), 1).unwrap().log;
        assert_eq!(log.next_revision(), 2);
        // The next frame has the damaged one's length, so the intact one
        // would line up behind it unless recovery cleared it.
        assert_eq!(log.append(&[(0, &[put("x", "9")])]).unwrap(), [2]);
        drop(log);
        assert_eq!(revisions(dir.path()), [1, 2]);
    }

    #[test]
    fn segments_are_filled_before_use_and_grow_until_the_largest() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = CommitLog::open(dir.path(), 1).unwrap().log;
        let big = put("k", &"v".repeat(60_000));
        let mut appended = 0;
        while log.segments.len() < 3 {
            log.append(&[(0, std::slice::from_ref(&big))]).unwrap();
            appended += 1;
        }
        let sizes: Vec<u64> = log
            .segments
            .iter()
            .map(|(_, p)| std::fs::metadata(p).unwrap().len())
            .collect();
        // Frames go into zeros written beforehand: no append grows a file.
        assert_eq!(
            sizes,
            [
                FIRST_SEGMENT_BYTES,
                4 * FIRST_SEGMENT_BYTES,
                16 * FIRST_SEGMENT_BYTES
            ]
        );
        drop(log);
        // A spare still being prepared at the crash is thrown away.
        std::fs::write(dir.path().join(LOG_DIR).join(SPARE_NAME), b"half").unwrap();
        assert_eq!(revisions(dir.path()), (1..=appended).collect::<Vec<u64>>());
        assert!(!dir.path().join(LOG_DIR).join(SPARE_NAME).exists());
    }

    /// Rolling from one segment to the next must not lose a name: a power
    /// loss right after the appends keeps every frame, across segments,
    /// and drops the half-prepared spare.
    #[test]
    fn frames_in_rolled_segments_survive_power_loss() {
        let (_root, fs, mnt) = exdaas_tests::powerfs::PowerFs::mount_temp().unwrap();
        // The log makes the directories it creates durable itself.
        let dir = mnt.join("data");
        let mut log = CommitLog::open(&dir, 1).unwrap().log;
        let big = put("k", &"v".repeat(200_000));
        let mut appended = 0;
        // Into the third segment, so the second was a prepared spare.
        while log.segments.len() < 3 {
            log.append(&[(0, std::slice::from_ref(&big))]).unwrap();
            appended += 1;
        }
        // A spare being filled, not synced, not renamed.
        std::fs::write(dir.join(LOG_DIR).join(SPARE_NAME), b"half").unwrap();
        drop(log);
        assert!(fs.power_loss() > 0);
        assert_eq!(revisions(&dir), (1..=appended).collect::<Vec<u64>>());
    }

    #[test]
    fn trimmed_and_reset_logs_keep_counting() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = CommitLog::open(dir.path(), 100).unwrap().log;
        assert_eq!(log.append(&[(0, &[put("a", "1")])]).unwrap(), [100]);
        log.reset(Retention::NONE).unwrap();
        drop(log);
        let recovered = CommitLog::open(dir.path(), 1).unwrap();
        assert!(recovered.frames.is_empty());
        assert_eq!(recovered.log.next_revision(), 101);
        let files = std::fs::read_dir(dir.path().join(LOG_DIR)).unwrap().count();
        assert_eq!(files, 1);
    }
}
