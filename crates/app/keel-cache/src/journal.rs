//! The write-back journal: what makes a write-back acknowledgement as durable as a database
//! commit.
//!
//! A record is `[len: u32][crc32: u32][seq: u64][payload]` (little-endian; the checksum covers seq
//! and payload). Records go to segment files `<name>-<first seq>.wal` in one directory. A single
//! writer thread takes every record waiting in its queue, writes them, calls `fdatasync` once,
//! then acknowledges them all (group commit): the cost of a sync is shared by every concurrent
//! writer. Segments are deleted once the caller releases every sequence number they hold, that is
//! once their records are in the database.
//!
//! On open, every segment is read back. A torn record after the last whole one is a write that
//! was never acknowledged (its sync had not returned): it is cut off, and segments holding no
//! whole record are removed. Damage anywhere else is refused with an error, since skipping it
//! could drop an acknowledged write. Sequence numbers never restart below a segment's name, so
//! segments sort in the order they were written even after crashes in a row.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

const HEADER: usize = 16;
/// Largest payload accepted; a length beyond it in a file is damage, not a record.
const MAX_PAYLOAD: usize = 16 * 1024 * 1024;
/// Most records synced together.
const MAX_GROUP: usize = 4096;

/// Records read back on open, in sequence order.
#[derive(Debug, Default)]
pub struct Replayed {
    pub records: Records,
    pub last_seq: u64,
}

enum Cmd {
    Append {
        seq: u64,
        payload: Vec<u8>,
        done: oneshot::Sender<io::Result<()>>,
    },
    Release {
        upto: u64,
    },
    Close {
        done: oneshot::Sender<()>,
    },
}

/// An open journal. Appends are durable when their future resolves `Ok`.
pub struct Journal {
    tx: mpsc::Sender<Cmd>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Journal")
    }
}

struct Segment {
    path: PathBuf,
    last_seq: u64,
}

struct Writer {
    dir: PathBuf,
    name: String,
    closed: Vec<Segment>,
    current: Option<(BufWriter<File>, Segment)>,
}

impl Journal {
    /// Opens the journal `name` in `dir` (created if missing) and reads back what it holds.
    ///
    /// Every state a kill can leave is recovered: segments holding no whole record (created just
    /// before a crash, or cut by one mid-way through their first record) are removed, and a torn
    /// record is cut off the end of the last segment that holds a whole one. Damage anywhere
    /// before that last whole record is refused, since skipping it could drop an acknowledged
    /// write. Sequence numbers continue after every number a segment was named with, so a new
    /// segment always sorts after the ones already on disk.
    pub fn open(dir: &Path, name: &str) -> io::Result<(Self, Replayed)> {
        fs::create_dir_all(dir)?;
        let mut paths: Vec<(u64, PathBuf)> = fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| segment_seq(&p, name).map(|seq| (seq, p)))
            .collect();
        paths.sort();
        let mut read = Vec::with_capacity(paths.len());
        for (named, path) in paths {
            let (records, torn_at) = read_segment(&path)?;
            read.push((named, path, records, torn_at));
        }
        let last_whole = read
            .iter()
            .rposition(|(_, _, records, _)| !records.is_empty());
        let mut replayed = Replayed::default();
        let mut closed = Vec::new();
        let mut removed = false;
        for (i, (named, path, records, torn_at)) in read.into_iter().enumerate() {
            replayed.last_seq = replayed.last_seq.max(named);
            if last_whole.is_none_or(|last| i > last) {
                // No whole record here, and none after: nothing in it was ever acknowledged.
                tracing::warn!(path = %path.display(), "removing a journal segment that holds no whole record");
                fs::remove_file(&path)?;
                removed = true;
                continue;
            }
            if let Some(at) = torn_at {
                if Some(i) != last_whole {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "journal segment {} is damaged at byte {at}; refusing to start rather than lose writes",
                            path.display()
                        ),
                    ));
                }
                // The last record written: its sync had not returned, so it was never
                // acknowledged.
                tracing::warn!(path = %path.display(), offset = at, "cutting a torn, unacknowledged record off the journal");
                let file = OpenOptions::new().write(true).open(&path)?;
                file.set_len(at as u64)?;
                file.sync_all()?;
            }
            let last_seq = records.last().map_or(named, |(seq, _)| *seq);
            replayed.last_seq = replayed.last_seq.max(last_seq);
            replayed.records.extend(records);
            closed.push(Segment { path, last_seq });
        }
        if removed {
            sync_dir(dir)?;
        }
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            name: name.to_owned(),
            closed,
            current: None,
        };
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("journal-{name}"))
            .spawn(move || writer.run(rx))?;
        Ok((
            Self {
                tx,
                thread: Mutex::new(Some(thread)),
            },
            replayed,
        ))
    }

    /// Queues a record (its position in the journal is fixed by this call) and returns a future
    /// that resolves once it is on disk.
    pub fn enqueue(
        &self,
        seq: u64,
        payload: Vec<u8>,
    ) -> impl Future<Output = io::Result<()>> + use<> {
        let (done, rx) = oneshot::channel();
        let sent = self.tx.send(Cmd::Append { seq, payload, done });
        async move {
            sent.map_err(|_| closed())?;
            rx.await.map_err(|_| closed())?
        }
    }

    /// Every record with a sequence number up to `upto` is safe elsewhere: segments holding only
    /// such records are deleted.
    pub fn release(&self, upto: u64) {
        let _ = self.tx.send(Cmd::Release { upto });
    }

    /// Stops the writer after the records already queued.
    pub async fn close(&self) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Cmd::Close { done }).is_ok() {
            let _ = rx.await;
        }
        let thread = self.thread.lock().expect("journal thread lock").take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "journal closed")
}

/// The sequence number a segment of journal `name` is named with, if `path` is one.
fn segment_seq(path: &Path, name: &str) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_prefix(name)?
        .strip_prefix('-')?
        .strip_suffix(".wal")?
        .parse()
        .ok()
}

/// Makes the directory's entries (created or removed files) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Records as (sequence number, payload).
type Records = Vec<(u64, Vec<u8>)>;

/// The whole records of a segment, and the offset of the first byte that does not start one.
fn read_segment(path: &Path) -> io::Result<(Records, Option<usize>)> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        match decode(&bytes[at..]) {
            Some((seq, payload, used)) => {
                records.push((seq, payload.to_vec()));
                at += used;
            }
            None => return Ok((records, Some(at))),
        }
    }
    Ok((records, None))
}

/// One record from the start of `buf`: (seq, payload, bytes used), or None if torn or damaged.
fn decode(buf: &[u8]) -> Option<(u64, &[u8], usize)> {
    if buf.len() < HEADER {
        return None;
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().ok()?);
    if len > MAX_PAYLOAD || buf.len() < HEADER + len {
        return None;
    }
    let body = &buf[8..HEADER + len];
    if crc32fast::hash(body) != crc {
        return None;
    }
    let seq = u64::from_le_bytes(body[0..8].try_into().ok()?);
    Some((seq, &body[8..], HEADER + len))
}

fn encode(seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    let mut body = Vec::with_capacity(8 + payload.len());
    body.extend_from_slice(&seq.to_le_bytes());
    body.extend_from_slice(payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
}

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Cmd>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            let mut pending = Vec::new();
            let mut failed: Option<io::ErrorKind> = None;
            let mut stop = None;
            for cmd in batch {
                match cmd {
                    Cmd::Append { seq, payload, done } => {
                        if failed.is_none()
                            && let Err(e) = self.write(seq, &payload)
                        {
                            failed = Some(e.kind());
                            tracing::error!(error = %e, "journal write failed");
                        }
                        pending.push(done);
                    }
                    Cmd::Release { upto } => {
                        // Records written but not yet synced stay in the current segment, and a
                        // release never covers them (the flusher only releases what it applied).
                        if let Err(e) = self.sync().and_then(|()| self.release(upto)) {
                            tracing::error!(error = %e, "journal release failed");
                        }
                    }
                    Cmd::Close { done } => stop = Some(done),
                }
            }
            if failed.is_none()
                && !pending.is_empty()
                && let Err(e) = self.sync()
            {
                tracing::error!(error = %e, "journal sync failed");
                failed = Some(e.kind());
            }
            for done in pending {
                let _ = done.send(match failed {
                    None => Ok(()),
                    Some(kind) => Err(io::Error::new(kind, "journal write failed")),
                });
            }
            if let Some(done) = stop {
                let _ = self.sync();
                let _ = done.send(());
                return;
            }
        }
    }

    fn write(&mut self, seq: u64, payload: &[u8]) -> io::Result<()> {
        if self.current.is_none() {
            let path = self.dir.join(format!("{}-{seq:020}.wal", self.name));
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)?;
            // The new file's directory entry must be durable before records in it are acknowledged.
            sync_dir(&self.dir)?;
            self.current = Some((
                BufWriter::with_capacity(256 * 1024, file),
                Segment {
                    path,
                    last_seq: seq,
                },
            ));
        }
        let (file, segment) = self.current.as_mut().expect("segment is open");
        let mut frame = Vec::with_capacity(HEADER + payload.len());
        encode(seq, payload, &mut frame);
        file.write_all(&frame)?;
        segment.last_seq = seq;
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        if let Some((file, _)) = self.current.as_mut() {
            file.flush()?;
            file.get_ref().sync_data()?;
        }
        Ok(())
    }

    fn release(&mut self, upto: u64) -> io::Result<()> {
        if self
            .current
            .as_ref()
            .is_some_and(|(_, s)| s.last_seq <= upto)
        {
            let (_, segment) = self.current.take().expect("checked above");
            self.closed.push(segment);
        }
        let mut kept = Vec::new();
        let mut removed = false;
        for segment in self.closed.drain(..) {
            if segment.last_seq <= upto {
                match fs::remove_file(&segment.path) {
                    Ok(()) => removed = true,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            } else {
                kept.push(segment);
            }
        }
        self.closed = kept;
        // A removal lost to a power cut would bring back records the database already has,
        // replayed out of order with newer ones.
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn appended_records_read_back_in_order_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, replayed) = Journal::open(dir.path(), "t").unwrap();
        assert!(replayed.records.is_empty());
        for seq in 1..=100u64 {
            journal
                .enqueue(seq, format!("record {seq}").into_bytes())
                .await
                .unwrap();
        }
        journal.close().await;
        let (_journal, replayed) = Journal::open(dir.path(), "t").unwrap();
        assert_eq!(replayed.records.len(), 100);
        assert_eq!(replayed.last_seq, 100);
        assert_eq!(replayed.records[41], (42, b"record 42".to_vec()));
    }

    #[tokio::test]
    async fn released_records_are_gone_after_reopen_and_later_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path(), "t").unwrap();
        for seq in 1..=10u64 {
            journal.enqueue(seq, vec![seq as u8]).await.unwrap();
        }
        journal.release(10);
        for seq in 11..=12u64 {
            journal.enqueue(seq, vec![seq as u8]).await.unwrap();
        }
        journal.release(5); // covers no whole segment: nothing more goes
        journal.close().await;
        let (_journal, replayed) = Journal::open(dir.path(), "t").unwrap();
        let seqs: Vec<u64> = replayed.records.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![11, 12]);
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_and_the_records_before_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path(), "t").unwrap();
        for seq in 1..=3u64 {
            journal.enqueue(seq, b"abc".to_vec()).await.unwrap();
        }
        journal.close().await;
        let segment = fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut file = OpenOptions::new().append(true).open(&segment).unwrap();
        file.write_all(&[9, 0, 0, 0, 1, 2]).unwrap(); // half a header: a crash mid-write
        drop(file);
        let (journal, replayed) = Journal::open(dir.path(), "t").unwrap();
        assert_eq!(replayed.records.len(), 3);
        journal.enqueue(4, b"d".to_vec()).await.unwrap();
        journal.close().await;
        let (_journal, replayed) = Journal::open(dir.path(), "t").unwrap();
        assert_eq!(
            replayed.records.len(),
            4,
            "the cut must leave the journal appendable"
        );
    }

    #[tokio::test]
    async fn damage_in_an_older_segment_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path(), "t").unwrap();
        journal.enqueue(1, b"first".to_vec()).await.unwrap();
        journal.release(0);
        journal.close().await;
        let (journal, _) = Journal::open(dir.path(), "t").unwrap();
        journal.enqueue(2, b"second".to_vec()).await.unwrap();
        journal.close().await;
        let mut segments: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        segments.sort();
        assert_eq!(segments.len(), 2);
        let mut bytes = fs::read(&segments[0]).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&segments[0], bytes).unwrap();
        let err = Journal::open(dir.path(), "t").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    /// Writes a segment of journal `t` named after `named`, holding `records` and then `tail`.
    fn segment(dir: &Path, named: u64, records: &[(u64, &[u8])], tail: &[u8]) -> PathBuf {
        let path = dir.join(format!("t-{named:020}.wal"));
        let mut bytes = Vec::new();
        for (seq, payload) in records {
            encode(*seq, payload, &mut bytes);
        }
        bytes.extend_from_slice(tail);
        fs::write(&path, bytes).unwrap();
        path
    }

    /// Half a record as a kill mid-write leaves it: a whole header, part of the payload.
    fn torn() -> Vec<u8> {
        let mut frame = Vec::new();
        encode(99, b"never acknowledged", &mut frame);
        frame.truncate(HEADER + 4);
        frame
    }

    fn seqs(replayed: &Replayed) -> Vec<u64> {
        replayed.records.iter().map(|(s, _)| *s).collect()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    /// Appends `seqs` and closes; every record must be acknowledged.
    async fn append(dir: &Path, seqs: std::ops::RangeInclusive<u64>) {
        let (journal, _) = Journal::open(dir, "t").unwrap();
        for seq in seqs {
            journal.enqueue(seq, vec![seq as u8]).await.unwrap();
        }
        journal.close().await;
    }

    #[tokio::test]
    async fn an_empty_segment_left_by_a_kill_after_its_creation_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        segment(dir.path(), 7, &[], &[]);
        let (journal, replayed) = Journal::open(dir.path(), "t").unwrap();
        assert!(replayed.records.is_empty());
        assert_eq!(replayed.last_seq, 7, "numbers continue after the name");
        journal.close().await;
        assert!(names(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn a_segment_holding_only_half_a_first_record_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        segment(dir.path(), 1, &[(1, b"a"), (2, b"b")], &[]);
        segment(dir.path(), 3, &[], &torn());
        let (journal, replayed) = Journal::open(dir.path(), "t").unwrap();
        assert_eq!(seqs(&replayed), vec![1, 2]);
        assert_eq!(replayed.last_seq, 3);
        journal.close().await;
        assert_eq!(names(dir.path()), vec![format!("t-{:020}.wal", 1)]);
    }

    #[tokio::test]
    async fn a_torn_record_before_an_empty_segment_is_cut_two_crashes_in_a_row() {
        // The state two kills in a row left before numbers continued after segment names: an
        // empty segment named 900 (the first kill), then numbering restarted at 1 and the second
        // kill tore the last record of segment 1, which sorts before the empty one.
        let dir = tempfile::tempdir().unwrap();
        segment(dir.path(), 1, &[(1, b"a"), (2, b"b")], &torn());
        segment(dir.path(), 900, &[], &[]);
        let (journal, replayed) = Journal::open(dir.path(), "t").unwrap();
        assert_eq!(seqs(&replayed), vec![1, 2]);
        assert_eq!(replayed.last_seq, 900);
        journal.enqueue(901, b"c".to_vec()).await.unwrap();
        journal.close().await;
        let (_journal, replayed) = Journal::open(dir.path(), "t").unwrap();
        assert_eq!(seqs(&replayed), vec![1, 2, 901]);
    }

    #[tokio::test]
    async fn numbers_continue_after_every_segment_so_new_ones_sort_last() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), 1..=3).await;
        // A kill right after the next segment was created leaves it empty.
        segment(dir.path(), 4, &[], &[]);
        let (journal, replayed) = Journal::open(dir.path(), "t").unwrap();
        let next = replayed.last_seq + 1;
        assert_eq!(next, 5);
        journal.enqueue(next, b"after".to_vec()).await.unwrap();
        journal.close().await;
        // A second kill tears a record at the end of the newest segment.
        let newest = dir.path().join(names(dir.path()).pop().unwrap());
        let mut file = OpenOptions::new().append(true).open(&newest).unwrap();
        file.write_all(&torn()).unwrap();
        drop(file);
        let (_journal, replayed) = Journal::open(dir.path(), "t").unwrap();
        assert_eq!(seqs(&replayed), vec![1, 2, 3, 5]);
    }

    #[tokio::test]
    async fn a_torn_record_followed_by_whole_ones_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        segment(dir.path(), 1, &[(1, b"a")], &torn());
        segment(dir.path(), 2, &[(2, b"b")], &[]);
        let err = Journal::open(dir.path(), "t").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("damaged at byte"), "{err}");
    }

    #[tokio::test]
    async fn a_kill_after_a_release_before_the_next_write_restarts_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path(), "t").unwrap();
        for seq in 1..=4u64 {
            journal.enqueue(seq, vec![seq as u8]).await.unwrap();
        }
        journal.release(4);
        journal.close().await;
        assert!(
            names(dir.path()).is_empty(),
            "released segments are removed"
        );
        let (journal, replayed) = Journal::open(dir.path(), "t").unwrap();
        assert!(replayed.records.is_empty());
        journal
            .enqueue(replayed.last_seq + 1, b"x".to_vec())
            .await
            .unwrap();
        journal.close().await;
        let (_journal, replayed) = Journal::open(dir.path(), "t").unwrap();
        assert_eq!(replayed.records.len(), 1);
    }

    #[tokio::test]
    async fn files_that_are_not_segments_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("t-notanumber.wal"), b"junk").unwrap();
        fs::write(dir.path().join("users.rejected.jsonl"), b"{}").unwrap();
        let (journal, replayed) = Journal::open(dir.path(), "t").unwrap();
        assert!(replayed.records.is_empty());
        journal.close().await;
        assert_eq!(names(dir.path()).len(), 2);
    }
}
