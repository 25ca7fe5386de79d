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
//! On open, every segment is read back. A torn record at the very end of the newest segment is a
//! write that was never acknowledged (its sync had not returned): it is cut off. Damage anywhere
//! else is refused with an error, since skipping it could drop an acknowledged write.

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
    pub records: Vec<(u64, Vec<u8>)>,
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
    pub fn open(dir: &Path, name: &str) -> io::Result<(Self, Replayed)> {
        fs::create_dir_all(dir)?;
        let mut paths: Vec<PathBuf> = fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_segment(p, name))
            .collect();
        paths.sort();
        let mut replayed = Replayed::default();
        let mut closed = Vec::new();
        let n_paths = paths.len();
        for (i, path) in paths.into_iter().enumerate() {
            let newest = i + 1 == n_paths;
            let before = replayed.records.len();
            read_segment(&path, newest, &mut replayed.records)?;
            let last_seq = replayed.records[before..].last().map_or(0, |(seq, _)| *seq);
            replayed.last_seq = replayed.last_seq.max(last_seq);
            closed.push(Segment { path, last_seq });
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

fn is_segment(path: &Path, name: &str) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(&format!("{name}-")) && n.ends_with(".wal"))
}

fn read_segment(path: &Path, newest: bool, out: &mut Vec<(u64, Vec<u8>)>) -> io::Result<()> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut at = 0;
    while at < bytes.len() {
        match decode(&bytes[at..]) {
            Some((seq, payload, used)) => {
                out.push((seq, payload.to_vec()));
                at += used;
            }
            None if newest => {
                tracing::warn!(path = %path.display(), offset = at, "cutting a torn, unacknowledged record off the journal");
                let file = OpenOptions::new().write(true).open(path)?;
                file.set_len(at as u64)?;
                file.sync_all()?;
                break;
            }
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "journal segment {} is damaged at byte {at}; refusing to start rather than lose writes",
                        path.display()
                    ),
                ));
            }
        }
    }
    Ok(())
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
            File::open(&self.dir)?.sync_all()?;
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
        for segment in self.closed.drain(..) {
            if segment.last_seq <= upto {
                match fs::remove_file(&segment.path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            } else {
                kept.push(segment);
            }
        }
        self.closed = kept;
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
}
