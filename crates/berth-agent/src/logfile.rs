//! Serving a task's log file: the last N lines, then (with `follow`) whatever is appended,
//! like `tail -n N -f`, ending once the task is over and the file is drained. Last-N lines
//! the current file lacks come from the files rotation kept (`stdout.1`, `stdout.2`, ...).

use crate::driver::{DriverError, LogChunks};
use bytes::Bytes;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// Size of one read (and of one chunk of the stream, at most).
const CHUNK: usize = 64 * 1024;

/// Says whether the writer of the file is gone for good (the task is terminal).
pub type DoneFn = Box<dyn Fn() -> bool + Send + Sync>;

/// The byte offset where the last `n` lines of `file` start. Lines end with `\n`; an
/// unterminated last line counts as a line. `n == 0` is the end of the file.
pub fn tail_offset<F: Read + Seek>(file: &mut F, n: usize) -> io::Result<u64> {
    let len = file.seek(SeekFrom::End(0))?;
    if n == 0 || len == 0 {
        return Ok(len);
    }
    // The newline ending the last line does not start a line of its own.
    let mut last = [0u8; 1];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut last)?;
    let mut end = if last[0] == b'\n' { len - 1 } else { len };
    let mut found = 0usize;
    let mut buf = vec![0u8; 8192];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let size = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..size])?;
        for i in (0..size).rev() {
            if buf[i] == b'\n' {
                found += 1;
                if found == n {
                    return Ok(start + i as u64 + 1);
                }
            }
        }
        end = start;
    }
    Ok(0)
}

/// Most rotated files looked at (the agent keeps at most 100 files of a log).
const MAX_ROTATED: u32 = 100;

fn line_count(bytes: &[u8]) -> usize {
    let newlines = bytes.iter().filter(|b| **b == b'\n').count();
    newlines + usize::from(bytes.last().is_some_and(|b| *b != b'\n'))
}

/// The last `want` lines of the older output of `path` kept by rotation (`path.1` the
/// newest), oldest first.
fn rotated_tail(path: &Path, mut want: usize) -> io::Result<Vec<u8>> {
    let mut parts = Vec::new();
    for i in 1..=MAX_ROTATED {
        if want == 0 {
            break;
        }
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{i}"));
        let mut f = match std::fs::File::open(PathBuf::from(name)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(e) => return Err(e),
        };
        let start = tail_offset(&mut f, want)?;
        f.seek(SeekFrom::Start(start))?;
        let mut part = Vec::new();
        f.read_to_end(&mut part)?;
        want = want.saturating_sub(line_count(&part));
        parts.push(part);
    }
    parts.reverse();
    Ok(parts.concat())
}

struct Reader {
    path: PathBuf,
    tail: Option<usize>,
    follow: bool,
    done: DoneFn,
    poll: Duration,
    file: Option<tokio::fs::File>,
    offset: u64,
    /// Older lines from rotated files, sent before the file's own.
    rotated: Option<Bytes>,
    /// `done()` was seen true: one more read to EOF, then the stream ends.
    draining: bool,
    finished: bool,
}

impl Reader {
    /// Opens the file and positions it at the tail; `Ok(false)` when it does not exist yet.
    async fn open(&mut self) -> Result<bool, DriverError> {
        let path = self.path.clone();
        let tail = self.tail;
        type Opened = Option<(std::fs::File, u64, Vec<u8>)>;
        let opened = tokio::task::spawn_blocking(move || -> io::Result<Opened> {
            let mut f = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            let offset = match tail {
                Some(n) => tail_offset(&mut f, n)?,
                None => 0,
            };
            // The file has fewer lines than asked for: the rest may be in rotated files.
            // (Without a tail, only the current file: the rotated ones can be large.)
            let older = match tail {
                Some(n) if n > 0 && offset == 0 => {
                    let mut own = Vec::new();
                    f.read_to_end(&mut own)?;
                    rotated_tail(&path, n.saturating_sub(line_count(&own)))?
                }
                _ => Vec::new(),
            };
            Ok(Some((f, offset, older)))
        })
        .await
        .map_err(|e| DriverError::Other(format!("log reader: {e}")))??;
        let Some((f, offset, older)) = opened else {
            return Ok(false);
        };
        if !older.is_empty() {
            self.rotated = Some(Bytes::from(older));
        }
        let mut f = tokio::fs::File::from_std(f);
        f.seek(SeekFrom::Start(offset)).await?;
        self.file = Some(f);
        self.offset = offset;
        Ok(true)
    }

    /// The next chunk, or `None` at the end of the stream.
    async fn next(&mut self) -> Option<Result<Bytes, DriverError>> {
        if self.finished {
            return None;
        }
        let mut buf = vec![0u8; CHUNK];
        loop {
            if self.file.is_none() {
                match self.open().await {
                    Ok(true) => {}
                    Ok(false) => {
                        if !self.follow || self.draining {
                            self.finished = true;
                            return None;
                        }
                        self.draining = (self.done)();
                        if !self.draining {
                            tokio::time::sleep(self.poll).await;
                        }
                        continue;
                    }
                    Err(e) => {
                        self.finished = true;
                        return Some(Err(e));
                    }
                }
            }
            if let Some(older) = self.rotated.take() {
                return Some(Ok(older));
            }
            let Some(file) = self.file.as_mut() else {
                continue;
            };
            match file.read(&mut buf).await {
                Ok(0) => {}
                Ok(n) => {
                    self.offset += n as u64;
                    buf.truncate(n);
                    return Some(Ok(Bytes::from(buf)));
                }
                Err(e) => {
                    self.finished = true;
                    return Some(Err(e.into()));
                }
            }
            // End of file.
            if !self.follow || self.draining {
                self.finished = true;
                return None;
            }
            // Truncated under us (copytruncate-style rotation): start over.
            if let Ok(meta) = file.metadata().await
                && meta.len() < self.offset
            {
                if let Err(e) = file.seek(SeekFrom::Start(0)).await {
                    self.finished = true;
                    return Some(Err(e.into()));
                }
                self.offset = 0;
                continue;
            }
            // Once the writer is gone, read what it wrote last, then stop.
            self.draining = (self.done)();
            if !self.draining {
                tokio::time::sleep(self.poll).await;
            }
        }
    }
}

/// Streams `path` from its last `tail` lines (`None`: from the start). Without `follow` the
/// stream ends at the end of the file (at once when there is no file). With `follow` it waits
/// for the file to appear and grow, polling every `poll`, until `done()` is true and the file is
/// drained.
pub fn stream_file(
    path: PathBuf,
    tail: Option<usize>,
    follow: bool,
    done: DoneFn,
    poll: Duration,
) -> LogChunks {
    let reader = Reader {
        path,
        tail,
        follow,
        done,
        poll,
        file: None,
        offset: 0,
        rotated: None,
        draining: false,
        finished: false,
    };
    Box::pin(futures::stream::unfold(reader, |mut r| async move {
        r.next().await.map(|item| (item, r))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::io::{Cursor, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn tail_of(text: &str, n: usize) -> String {
        let mut c = Cursor::new(text.as_bytes().to_vec());
        let off = tail_offset(&mut c, n).unwrap() as usize;
        text[off..].to_string()
    }

    #[test]
    fn tail_counts_lines() {
        assert_eq!(tail_of("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail_of("a\nb\nc\n", 3), "a\nb\nc\n");
        assert_eq!(tail_of("a\nb\nc\n", 10), "a\nb\nc\n");
        assert_eq!(tail_of("a\nb\nc", 1), "c");
        assert_eq!(tail_of("a\nb\nc", 2), "b\nc");
        assert_eq!(tail_of("a\nb\n", 0), "");
        assert_eq!(tail_of("", 5), "");
        assert_eq!(tail_of("\n\n\n", 2), "\n\n");
        // Lines longer than the scan buffer.
        let long = format!("{}\n{}\n{}\n", "x".repeat(20_000), "y".repeat(9_000), "z");
        assert_eq!(tail_of(&long, 2), format!("{}\nz\n", "y".repeat(9_000)));
        let many: String = (0..5000).map(|i| format!("line{i}\n")).collect();
        assert_eq!(tail_of(&many, 3), "line4997\nline4998\nline4999\n");
    }

    async fn collect(s: LogChunks) -> String {
        let chunks: Vec<Bytes> = s.map(|c| c.unwrap()).collect().await;
        String::from_utf8(chunks.concat()).unwrap()
    }

    /// Right after a rotation the current file has few lines: the tail reaches back into
    /// the rotated files, oldest first; without a tail only the current file is read.
    #[tokio::test]
    async fn tail_reaches_into_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        std::fs::write(dir.path().join("stdout.2"), "1\n2\n3\n").unwrap();
        std::fs::write(dir.path().join("stdout.1"), "4\n5\n").unwrap();
        std::fs::write(&path, "6\n").unwrap();
        let read = |tail: Option<usize>| {
            collect(stream_file(
                path.clone(),
                tail,
                false,
                Box::new(|| false),
                Duration::from_millis(10),
            ))
        };
        assert_eq!(read(Some(1)).await, "6\n");
        assert_eq!(read(Some(2)).await, "5\n6\n");
        assert_eq!(read(Some(4)).await, "3\n4\n5\n6\n");
        assert_eq!(read(Some(100)).await, "1\n2\n3\n4\n5\n6\n");
        assert_eq!(read(Some(0)).await, "");
        assert_eq!(read(None).await, "6\n");
        // An empty current file (just truncated).
        std::fs::write(&path, "").unwrap();
        assert_eq!(read(Some(3)).await, "3\n4\n5\n");
    }

    #[tokio::test]
    async fn reads_tail_without_follow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        std::fs::write(&path, "1\n2\n3\n4\n").unwrap();
        let s = stream_file(
            path.clone(),
            Some(2),
            false,
            Box::new(|| false),
            Duration::from_millis(10),
        );
        assert_eq!(collect(s).await, "3\n4\n");
        let s = stream_file(
            path,
            None,
            false,
            Box::new(|| false),
            Duration::from_millis(10),
        );
        assert_eq!(collect(s).await, "1\n2\n3\n4\n");
        let missing = dir.path().join("nope");
        let s = stream_file(
            missing,
            None,
            false,
            Box::new(|| false),
            Duration::from_millis(10),
        );
        assert_eq!(collect(s).await, "");
    }

    #[tokio::test]
    async fn follow_streams_appends_until_done_and_drained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let mut s = stream_file(
            path.clone(),
            Some(1),
            true,
            Box::new(move || d.load(Ordering::SeqCst)),
            Duration::from_millis(10),
        );
        // The file does not exist yet: the stream waits for it.
        let writer = {
            let path = path.clone();
            let done = done.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                // Appears with content at once (written aside, then renamed).
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, b"old\nfirst\n").unwrap();
                std::fs::rename(&tmp, &path).unwrap();
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                f.write_all(b"second\n").unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                // The last words and the end come together: they must still be sent.
                f.write_all(b"last\n").unwrap();
                done.store(true, Ordering::SeqCst);
            })
        };
        let mut got = String::new();
        let res = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(c) = s.next().await {
                got.push_str(std::str::from_utf8(&c.unwrap()).unwrap());
            }
        })
        .await;
        writer.await.unwrap();
        assert!(res.is_ok(), "stream did not end; got {got:?}");
        // The tail applies to the file as first seen.
        assert_eq!(got, "first\nsecond\nlast\n");
    }
}
