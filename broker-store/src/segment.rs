//! One segment file of a topic's log: a header, then records, each with a
//! CRC-32 of its body.
//!
//! ```text
//! header (32 bytes): "WHBLOG" | version u16 | base offset u64 | id prefix (12 ASCII hex) | crc32 of the 28 bytes before
//! record, version 4: length u32 | crc32 u32 | offset u64 | publish time (ms since the epoch) u64 |
//!                    content-type length u16 | event-type length u8 | key length u8 |
//!                    trace length u16 |
//!                    content type | event type | idempotency key |
//!                    (when the key length is not 0) fingerprint u64 | subscribers u32 |
//!                    trace context (broker_core::TraceContext::encode) | payload
//! record, version 3: version 4 without the trace, and its length
//! record, version 2: version 3 without the key, its length and what follows the key
//! record, version 1: version 2 without the event type and its length
//! ```
//!
//! This build writes version 4 and reads all four: a segment written by
//! an older build is read as it is and never appended to (the log starts
//! a new segment for its next append), so no data dir needs a migration.
//!
//! All integers little-endian; `length` counts the bytes after the crc;
//! the crc covers those bytes. A segment is named by its base offset,
//! zero-padded to 20 digits: `00000000000000001000.log`.

use std::{
    fs::File,
    io,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use parking_lot::Mutex;

/// The format version this build writes.
pub(crate) const VERSION: u16 = 4;
/// The oldest version this build reads.
pub(crate) const OLDEST: u16 = 1;
const MAGIC: &[u8; 6] = b"WHBLOG";
pub(crate) const HEADER_LEN: u64 = 32;
/// Length and crc before each record's body.
pub(crate) const RECORD_HEAD: usize = 8;
/// Offset, time and content-type length (version 1).
const BODY_FIXED_V1: usize = 8 + 8 + 2;
/// Offset, time, content-type and event-type lengths (version 2).
const BODY_FIXED_V2: usize = BODY_FIXED_V1 + 1;
/// Offset, time, content-type, event-type and key lengths (version 3).
const BODY_FIXED_V3: usize = BODY_FIXED_V2 + 1;
/// Offset, time, content-type, event-type, key and trace lengths.
const BODY_FIXED: usize = BODY_FIXED_V3 + 2;
/// The fingerprint and subscriber count after a key.
const KEYED_FIXED: usize = 8 + 4;
/// No record is longer: a length past it is garbage, not a record.
pub(crate) const MAX_RECORD: usize = 1 << 30;
/// A sparse index entry every this many bytes of log.
const INDEX_EVERY: u64 = 8 * 1024;
/// Bytes read at once when scanning.
const CHUNK: usize = 256 * 1024;
/// Zeros written ahead of the newest segment's records, this many bytes
/// at a time. An append then overwrites bytes the file already has, and
/// its `fdatasync` need not record a new file size: on this project's
/// disk 126 µs instead of 185 µs (BENCHMARKS.md, §17). The zeros are cut
/// off when the segment is sealed, and when the log opens after a crash.
pub(crate) const PREALLOCATE: u64 = 256 * 1024;

/// Bytes a read for messages starts with ([`scan_from`]); each further
/// read doubles, up to [`CHUNK`]. A fetch of a few messages then copies a
/// few KiB out of the page cache, not 256 KiB.
pub(crate) const FIRST_READ: usize = 16 * 1024;

/// What a segment's header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) base: u64,
    pub(crate) prefix: String,
    /// The format its records are in (a new segment: [`VERSION`]).
    pub(crate) version: u16,
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// Too short, wrong magic or a bad checksum.
    Corrupt,
    /// A version this build does not know.
    Version(u16),
}

pub(crate) fn encode_header(h: &Header) -> [u8; HEADER_LEN as usize] {
    let mut out = [0u8; HEADER_LEN as usize];
    out[..6].copy_from_slice(MAGIC);
    out[6..8].copy_from_slice(&h.version.to_le_bytes());
    out[8..16].copy_from_slice(&h.base.to_le_bytes());
    out[16..28].copy_from_slice(h.prefix.as_bytes());
    let crc = crc32fast::hash(&out[..28]);
    out[28..].copy_from_slice(&crc.to_le_bytes());
    out
}

pub(crate) fn decode_header(buf: &[u8]) -> Result<Header, HeaderError> {
    if buf.len() < HEADER_LEN as usize || &buf[..6] != MAGIC {
        return Err(HeaderError::Corrupt);
    }
    let version = u16::from_le_bytes([buf[6], buf[7]]);
    if !(OLDEST..=VERSION).contains(&version) {
        return Err(HeaderError::Version(version));
    }
    let crc = u32::from_le_bytes(buf[28..32].try_into().expect("4 bytes"));
    if crc != crc32fast::hash(&buf[..28]) {
        return Err(HeaderError::Corrupt);
    }
    let prefix = std::str::from_utf8(&buf[16..28]).map_err(|_| HeaderError::Corrupt)?;
    if !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(HeaderError::Corrupt);
    }
    Ok(Header {
        base: u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes")),
        prefix: prefix.to_owned(),
        version,
    })
}

/// A record's idempotency key, with what it was first used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordKey<'a> {
    pub(crate) key: &'a [u8],
    pub(crate) fingerprint: u64,
    pub(crate) subscribers: u32,
}

/// Appends one record to `out`, in [`VERSION`]: its fields, borrowed,
/// one argument each.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_record(
    out: &mut Vec<u8>,
    offset: u64,
    time_ms: u64,
    content_type: &[u8],
    event_type: &[u8],
    key: Option<RecordKey<'_>>,
    trace: &[u8],
    payload: &[u8],
) {
    encode_versioned(
        out,
        VERSION,
        offset,
        time_ms,
        content_type,
        event_type,
        key,
        trace,
        payload,
    );
}

/// Appends one record to `out` in format `version` (2 to 4; 2 drops the
/// key, 3 the trace).
#[allow(clippy::too_many_arguments)]
fn encode_versioned(
    out: &mut Vec<u8>,
    version: u16,
    offset: u64,
    time_ms: u64,
    content_type: &[u8],
    event_type: &[u8],
    key: Option<RecordKey<'_>>,
    trace: &[u8],
    payload: &[u8],
) {
    let trace = if version >= 4 {
        &trace[..trace.len().min(u16::MAX as usize)]
    } else {
        &[][..]
    };
    let ct = &content_type[..content_type.len().min(u16::MAX as usize)];
    let et = &event_type[..event_type.len().min(u8::MAX as usize)];
    let key = key.filter(|k| version >= 3 && !k.key.is_empty());
    let k = key.map_or(&[][..], |k| &k.key[..k.key.len().min(u8::MAX as usize)]);
    let fixed = match version {
        4.. => BODY_FIXED,
        3 => BODY_FIXED_V3,
        _ => BODY_FIXED_V2,
    };
    let keyed = if key.is_some() { KEYED_FIXED } else { 0 };
    let len = fixed + ct.len() + et.len() + k.len() + keyed + trace.len() + payload.len();
    out.reserve(RECORD_HEAD + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    let crc_at = out.len();
    out.extend_from_slice(&[0; 4]);
    let body_at = out.len();
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&time_ms.to_le_bytes());
    out.extend_from_slice(&(ct.len() as u16).to_le_bytes());
    out.push(et.len() as u8);
    if version >= 3 {
        out.push(k.len() as u8);
    }
    if version >= 4 {
        out.extend_from_slice(&(trace.len() as u16).to_le_bytes());
    }
    out.extend_from_slice(ct);
    out.extend_from_slice(et);
    if let Some(key) = key {
        out.extend_from_slice(k);
        out.extend_from_slice(&key.fingerprint.to_le_bytes());
        out.extend_from_slice(&key.subscribers.to_le_bytes());
    }
    out.extend_from_slice(trace);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[body_at..]);
    out[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Appends one record to `out` as builds before idempotency keys wrote
/// it (format version 2), for tests of reading old data dirs.
#[cfg(test)]
pub(crate) fn encode_record_v2(
    out: &mut Vec<u8>,
    offset: u64,
    time_ms: u64,
    content_type: &[u8],
    event_type: &[u8],
    payload: &[u8],
) {
    encode_versioned(
        out,
        2,
        offset,
        time_ms,
        content_type,
        event_type,
        None,
        &[],
        payload,
    );
}

/// One record, borrowed from a read buffer.
#[derive(Debug)]
pub(crate) struct RecordRef<'a> {
    pub(crate) offset: u64,
    pub(crate) time_ms: u64,
    pub(crate) content_type: &'a [u8],
    /// Empty: none (and always in a version 1 segment).
    pub(crate) event_type: &'a [u8],
    /// Its idempotency key (never in a segment older than version 3).
    pub(crate) key: Option<RecordKey<'a>>,
    /// Its trace context, encoded; empty for none (and always before
    /// version 4).
    pub(crate) trace: &'a [u8],
    pub(crate) payload: &'a [u8],
    /// Bytes it takes in the file.
    pub(crate) size: usize,
}

#[derive(Debug)]
enum Decoded<'a> {
    Record(RecordRef<'a>),
    /// The buffer holds only the first part; the record takes this many
    /// bytes in all.
    Incomplete(usize),
    Corrupt(&'static str),
}

fn decode(buf: &[u8], version: u16) -> Decoded<'_> {
    if buf.len() < RECORD_HEAD {
        return Decoded::Incomplete(RECORD_HEAD);
    }
    let fixed = match version {
        1 => BODY_FIXED_V1,
        2 => BODY_FIXED_V2,
        3 => BODY_FIXED_V3,
        _ => BODY_FIXED,
    };
    let len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    if !(fixed..=MAX_RECORD).contains(&len) {
        return Decoded::Corrupt("impossible record length");
    }
    let size = RECORD_HEAD + len;
    if buf.len() < size {
        return Decoded::Incomplete(size);
    }
    let body = &buf[RECORD_HEAD..size];
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    if crc != crc32fast::hash(body) {
        return Decoded::Corrupt("checksum mismatch");
    }
    let ct_len = u16::from_le_bytes([body[16], body[17]]) as usize;
    let et_len = if version == 1 { 0 } else { body[18] as usize };
    let key_len = if version >= 3 { body[19] as usize } else { 0 };
    let keyed = if key_len > 0 { KEYED_FIXED } else { 0 };
    let trace_len = if version >= 4 {
        u16::from_le_bytes([body[20], body[21]]) as usize
    } else {
        0
    };
    if fixed + ct_len + et_len + key_len + keyed + trace_len > len {
        return Decoded::Corrupt("content type, event type, key or trace past the record");
    }
    let et_at = fixed + ct_len;
    let key_at = et_at + et_len;
    let trace_at = key_at + key_len + keyed;
    let payload_at = trace_at + trace_len;
    let key = (key_len > 0).then(|| {
        let at = key_at + key_len;
        RecordKey {
            key: &body[key_at..at],
            fingerprint: u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes")),
            subscribers: u32::from_le_bytes(body[at + 8..at + 12].try_into().expect("4 bytes")),
        }
    });
    Decoded::Record(RecordRef {
        offset: u64::from_le_bytes(body[..8].try_into().expect("8 bytes")),
        time_ms: u64::from_le_bytes(body[8..16].try_into().expect("8 bytes")),
        content_type: &body[fixed..et_at],
        event_type: &body[et_at..key_at],
        key,
        trace: &body[trace_at..payload_at],
        payload: &body[payload_at..],
        size,
    })
}

/// Where a scan stopped.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// At `end`, after whole records.
    End(u64),
    /// The callback asked to stop before the record at this position.
    Asked(u64),
    /// The record at this position is torn or corrupt.
    Bad(u64, &'static str),
}

/// Calls `f` with each record between `start` and `end` (file
/// positions) of a segment in format `version`, in order, until it
/// returns `false`, a record is bad, or `end` is reached. Reads
/// [`CHUNK`] at a time: for scans of whole segments.
pub(crate) fn scan(
    file: &File,
    version: u16,
    start: u64,
    end: u64,
    f: impl FnMut(u64, &RecordRef<'_>) -> bool,
) -> io::Result<Stop> {
    scan_from(file, version, start, end, CHUNK, f)
}

/// As [`scan`], the first read `first` bytes, each further read twice
/// the last, up to [`CHUNK`]: for reads that may want only a few records.
pub(crate) fn scan_from(
    file: &File,
    version: u16,
    start: u64,
    end: u64,
    first: usize,
    mut f: impl FnMut(u64, &RecordRef<'_>) -> bool,
) -> io::Result<Stop> {
    let mut buf = Vec::new();
    let mut pos = start;
    let mut chunk = first.clamp(1, CHUNK);
    let mut need = chunk;
    while pos < end {
        let want = need.max(chunk).min((end - pos) as usize);
        buf.resize(want, 0);
        file.read_exact_at(&mut buf, pos)?;
        let mut at = 0;
        while at < want {
            match decode(&buf[at..], version) {
                Decoded::Record(r) => {
                    if !f(pos + at as u64, &r) {
                        return Ok(Stop::Asked(pos + at as u64));
                    }
                    at += r.size;
                }
                Decoded::Incomplete(size) => {
                    if pos + (at + size) as u64 > end {
                        return Ok(Stop::Bad(pos + at as u64, "torn record"));
                    }
                    need = size;
                    break;
                }
                Decoded::Corrupt(why) => return Ok(Stop::Bad(pos + at as u64, why)),
            }
        }
        pos += at as u64;
        chunk = (chunk * 2).min(CHUNK);
    }
    Ok(Stop::End(pos))
}

/// The file name of the segment starting at `base`.
pub(crate) fn file_name(base: u64) -> String {
    format!("{base:020}.log")
}

/// The base offset a segment file name stands for.
pub(crate) fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// One open segment.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) base: u64,
    /// The format of its records.
    pub(crate) version: u16,
    pub(crate) path: PathBuf,
    /// Open while the segment takes appends; a sealed segment holds no
    /// file descriptor (a read opens it), so open files grow with topics,
    /// not with segments.
    open: Mutex<Option<Arc<File>>>,
    /// Bytes of whole records written, header included: readers stop here.
    pub(crate) end: AtomicU64,
    /// The file's length: `end` and the zeros written ahead of it
    /// ([`PREALLOCATE`]).
    pub(crate) allocated: AtomicU64,
    /// Publish time of its newest record (ms since the epoch), 0 if none.
    pub(crate) newest_ms: AtomicU64,
    /// Publish time of its oldest record, 0 if none.
    pub(crate) oldest_ms: AtomicU64,
    /// (offset, position) every [`INDEX_EVERY`] bytes. `None` for a
    /// sealed segment found at start until a read needs it (start-up reads
    /// no sealed segment).
    index: Mutex<Option<Vec<(u64, u64)>>>,
}

impl Segment {
    pub(crate) fn new(
        base: u64,
        version: u16,
        path: PathBuf,
        file: Option<File>,
        end: u64,
        indexed: bool,
    ) -> Self {
        Segment {
            base,
            version,
            path,
            open: Mutex::new(file.map(Arc::new)),
            end: AtomicU64::new(end),
            allocated: AtomicU64::new(end),
            newest_ms: AtomicU64::new(0),
            oldest_ms: AtomicU64::new(0),
            index: Mutex::new(indexed.then(Vec::new)),
        }
    }

    /// The segment's file: the open one while it takes appends, else
    /// opened for this caller (read-only).
    pub(crate) fn file(&self) -> io::Result<Arc<File>> {
        if let Some(file) = &*self.open.lock() {
            return Ok(file.clone());
        }
        File::open(&self.path).map(Arc::new)
    }

    /// The file open for appends: kept open from here on, until
    /// [`Segment::seal`].
    pub(crate) fn writable(&self) -> io::Result<Arc<File>> {
        let mut open = self.open.lock();
        if let Some(file) = &*open {
            return Ok(file.clone());
        }
        let file = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.path)?,
        );
        *open = Some(file.clone());
        Ok(file)
    }

    /// Closes the file: once the segment takes no more appends, or while
    /// its topic is idle (the next append opens it again).
    pub(crate) fn seal(&self) {
        *self.open.lock() = None;
    }

    pub(crate) fn end(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }

    /// Notes a record written at `pos` (the writer holds the topic lock).
    pub(crate) fn indexed(&self, offset: u64, pos: u64, time_ms: u64) {
        if let Some(index) = self.index.lock().as_mut() {
            let last = index.last().map_or(HEADER_LEN, |&(_, p)| p);
            if index.is_empty() || pos >= last + INDEX_EVERY {
                index.push((offset, pos));
            }
        }
        if self.oldest_ms.load(Ordering::Relaxed) == 0 {
            self.oldest_ms.store(time_ms.max(1), Ordering::Relaxed);
        }
        self.newest_ms.store(time_ms.max(1), Ordering::Relaxed);
    }

    /// A position at or before the record with `offset`: from the sparse
    /// index, built by one scan of the segment on first need.
    pub(crate) fn position_of(&self, offset: u64) -> io::Result<u64> {
        let mut index = self.index.lock();
        if index.is_none() {
            let mut built = Vec::new();
            let mut last = 0;
            scan(
                &*self.file()?,
                self.version,
                HEADER_LEN,
                self.end(),
                |pos, r| {
                    if built.is_empty() || pos >= last + INDEX_EVERY {
                        built.push((r.offset, pos));
                        last = pos;
                    }
                    true
                },
            )?;
            *index = Some(built);
        }
        let index = index.as_ref().expect("built above");
        let at = index.partition_point(|&(o, _)| o <= offset);
        Ok(if at == 0 { HEADER_LEN } else { index[at - 1].1 })
    }
}

/// Reads a segment's header.
pub(crate) fn read_header(file: &File, path: &Path) -> io::Result<Result<Header, HeaderError>> {
    let mut buf = [0u8; HEADER_LEN as usize];
    match file.read_exact_at(&mut buf, 0) {
        Ok(()) => Ok(decode_header(&buf)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(Err(HeaderError::Corrupt)),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("reading {}: {e}", path.display()),
        )),
    }
}

/// Appends one record to `out` as builds before event types wrote it
/// (format version 1), for tests of reading old data dirs.
#[cfg(test)]
pub(crate) fn encode_record_v1(
    out: &mut Vec<u8>,
    offset: u64,
    time_ms: u64,
    content_type: &[u8],
    payload: &[u8],
) {
    let mut body = Vec::new();
    body.extend_from_slice(&offset.to_le_bytes());
    body.extend_from_slice(&time_ms.to_le_bytes());
    body.extend_from_slice(&(content_type.len() as u16).to_le_bytes());
    body.extend_from_slice(content_type);
    body.extend_from_slice(payload);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_refuse_what_they_do_not_know() {
        let h = Header {
            base: 42,
            prefix: "0123456789ab".into(),
            version: VERSION,
        };
        let mut bytes = encode_header(&h);
        assert_eq!(decode_header(&bytes), Ok(h));
        bytes[6] = 9;
        assert_eq!(decode_header(&bytes), Err(HeaderError::Version(9)));
        let mut bytes = encode_header(&Header {
            base: 1,
            prefix: "0123456789ab".into(),
            version: VERSION,
        });
        bytes[9] ^= 1;
        assert_eq!(decode_header(&bytes), Err(HeaderError::Corrupt));
        assert_eq!(decode_header(b"short"), Err(HeaderError::Corrupt));
    }

    #[test]
    fn records_decode_as_written() {
        let mut buf = Vec::new();
        encode_record(
            &mut buf,
            7,
            1234,
            b"text/plain",
            b"invoice.paid",
            None,
            &[],
            b"hello",
        );
        encode_record(&mut buf, 8, 1235, b"", b"", None, &[], b"");
        let key = RecordKey {
            key: b"order-42",
            fingerprint: 0xdead_beef_0123_4567,
            subscribers: 9,
        };
        encode_record(
            &mut buf,
            9,
            1236,
            b"",
            b"a.b",
            Some(key),
            b"trace",
            b"keyed",
        );
        let Decoded::Record(r) = decode(&buf, VERSION) else {
            panic!()
        };
        assert_eq!(r.key, None);
        assert_eq!(
            (r.offset, r.time_ms, r.content_type, r.event_type, r.payload),
            (
                7,
                1234,
                &b"text/plain"[..],
                &b"invoice.paid"[..],
                &b"hello"[..]
            )
        );
        let Decoded::Record(r2) = decode(&buf[r.size..], VERSION) else {
            panic!()
        };
        assert_eq!(
            (r2.offset, r2.event_type, r2.payload.len()),
            (8, &b""[..], 0)
        );
        let Decoded::Record(r3) = decode(&buf[r.size + r2.size..], VERSION) else {
            panic!()
        };
        assert_eq!(
            (r3.offset, r3.event_type, r3.key, r3.trace, r3.payload),
            (9, &b"a.b"[..], Some(key), &b"trace"[..], &b"keyed"[..])
        );
        assert_eq!(r.trace, b"");
        // Version 3 (before trace contexts): read with its key, no trace.
        let mut v3 = Vec::new();
        encode_versioned(
            &mut v3,
            3,
            9,
            1236,
            b"",
            b"a.b",
            Some(key),
            b"dropped",
            b"keyed",
        );
        let Decoded::Record(old) = decode(&v3, 3) else {
            panic!()
        };
        assert_eq!(
            (old.key, old.trace, old.payload),
            (Some(key), &b""[..], &b"keyed"[..])
        );
        assert!(matches!(decode(&buf[..5], VERSION), Decoded::Incomplete(8)));
        assert!(matches!(
            decode(&buf[..10], VERSION),
            Decoded::Incomplete(_)
        ));
        let mut bad = buf.clone();
        bad[20] ^= 0x40;
        assert!(matches!(decode(&bad, VERSION), Decoded::Corrupt(_)));
        assert!(matches!(
            decode(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0], VERSION),
            Decoded::Corrupt(_)
        ));
    }

    /// A version 1 record (as written by builds before event types),
    /// byte for byte: read with no event type.
    #[test]
    fn version_1_records_are_read_without_an_event_type() {
        let mut buf = Vec::new();
        encode_record_v1(&mut buf, 5, 99, b"text/plain", b"old");
        let Decoded::Record(r) = decode(&buf, 1) else {
            panic!()
        };
        assert_eq!(
            (r.offset, r.time_ms, r.content_type, r.event_type, r.payload),
            (5, 99, &b"text/plain"[..], &b""[..], &b"old"[..])
        );
        let mut header = encode_header(&Header {
            base: 0,
            prefix: "0123456789ab".into(),
            version: 1,
        });
        assert_eq!(decode_header(&header).map(|h| h.version), Ok(1));
        header[6] = 5;
        assert_eq!(decode_header(&header), Err(HeaderError::Version(5)));
    }

    /// A version 2 record (as written by builds before idempotency keys):
    /// read with its event type and no key.
    #[test]
    fn version_2_records_are_read_without_a_key() {
        let mut buf = Vec::new();
        encode_record_v2(&mut buf, 5, 99, b"", b"invoice.paid", b"old");
        let Decoded::Record(r) = decode(&buf, 2) else {
            panic!()
        };
        assert_eq!(
            (r.offset, r.event_type, r.key, r.payload),
            (5, &b"invoice.paid"[..], None, &b"old"[..])
        );
    }

    #[test]
    fn names_are_zero_padded_base_offsets() {
        assert_eq!(file_name(1000), "00000000000000001000.log");
        assert_eq!(parse_name("00000000000000001000.log"), Some(1000));
        for bad in [
            "1000.log",
            "0000000000000000100x.log",
            "00000000000000001000.idx",
        ] {
            assert_eq!(parse_name(bad), None);
        }
    }
}
