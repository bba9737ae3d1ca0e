//! Container logs in the CRI format (`<RFC3339Nano> stdout|stderr F|P <content>`): the writer
//! the shim feeds (rotation at 10 MiB, one rotated file kept as `<n>.log.1`) and the reader
//! behind `kubectl logs` (previous, tail, since, timestamps, limitBytes, follow).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::model::logs::{LogRequest, LogStream};

/// Kubernetes' default `containerLogMaxSize`.
pub const MAX_LOG_FILE: u64 = 10 << 20;
/// Longest line content written as one record; longer output is split into `P` records.
pub const MAX_LINE: usize = 16 << 10;
/// How often `follow` looks for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// One container attempt's log file, rotated at `max` bytes.
pub struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    max: u64,
}

impl LogWriter {
    pub fn open(path: &Path, max: u64) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            path: path.to_path_buf(),
            file,
            size,
            max,
        })
    }

    /// Writes one record; rotates first if it would overflow the file.
    pub fn write_record(
        &mut self,
        at: DateTime<Utc>,
        stream: &str,
        partial: bool,
        content: &[u8],
    ) -> std::io::Result<()> {
        let mut line = Vec::with_capacity(content.len() + 48);
        line.extend_from_slice(at.to_rfc3339_opts(SecondsFormat::Nanos, true).as_bytes());
        line.push(b' ');
        line.extend_from_slice(stream.as_bytes());
        line.extend_from_slice(if partial { b" P " } else { b" F " });
        line.extend_from_slice(content);
        line.push(b'\n');
        if self.size > 0 && self.size + line.len() as u64 > self.max {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let rotated = rotated_path(&self.path);
        std::fs::rename(&self.path, &rotated)?;
        self.file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

pub fn rotated_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// Copies one of the container's output pipes into the log as records until EOF.
pub fn copy_stream(
    mut from: impl Read,
    stream: &str,
    to: &std::sync::Mutex<LogWriter>,
    now: impl Fn() -> DateTime<Utc>,
) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 32 << 10];
    let write = |content: &[u8], partial: bool| {
        let mut w = to.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = w.write_record(now(), stream, partial, content) {
            eprintln!("writing the log: {e}");
        }
    };
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(i) = pending[start..].iter().position(|&b| b == b'\n') {
            let line = &pending[start..start + i];
            for chunk in split_long(line) {
                write(chunk.0, chunk.1);
            }
            start += i + 1;
        }
        pending.drain(..start);
        while pending.len() >= MAX_LINE {
            write(&pending[..MAX_LINE], true);
            pending.drain(..MAX_LINE);
        }
    }
    if !pending.is_empty() {
        write(&pending, false);
    }
}

/// A complete line as records of at most [`MAX_LINE`] bytes: all `P` but the last.
fn split_long(line: &[u8]) -> Vec<(&[u8], bool)> {
    if line.len() <= MAX_LINE {
        return vec![(line, false)];
    }
    let chunks: Vec<&[u8]> = line.chunks(MAX_LINE).collect();
    let last = chunks.len() - 1;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| (c, i != last))
        .collect()
}

/// One parsed record.
#[derive(Debug, PartialEq)]
struct Record<'a> {
    at: DateTime<Utc>,
    timestamp: &'a str,
    partial: bool,
    content: &'a [u8],
}

fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |&b| b == b' ');
    let ts = std::str::from_utf8(parts.next()?).ok()?;
    let _stream = parts.next()?;
    let tag = parts.next()?;
    let content = parts.next().unwrap_or(b"");
    let at = DateTime::parse_from_rfc3339(ts).ok()?.with_timezone(&Utc);
    Some(Record {
        at,
        timestamp: ts,
        partial: tag == b"P",
        content,
    })
}

/// Turns records into output lines, joining `P` records, filtering by time.
struct Formatter {
    since: Option<DateTime<Utc>>,
    timestamps: bool,
    /// The line being assembled from `P` records: (timestamp of its first record, bytes).
    open: Option<(String, DateTime<Utc>, Vec<u8>)>,
}

impl Formatter {
    fn push(&mut self, line: &[u8]) -> Option<Vec<u8>> {
        let rec = parse_record(line)?;
        let (ts, at, mut content) = self
            .open
            .take()
            .unwrap_or_else(|| (rec.timestamp.to_string(), rec.at, Vec::new()));
        content.extend_from_slice(rec.content);
        if rec.partial && content.len() < 4 * MAX_LINE * 64 {
            self.open = Some((ts, at, content));
            return None;
        }
        if self.since.is_some_and(|s| at < s) {
            return None;
        }
        let mut out = Vec::with_capacity(content.len() + ts.len() + 2);
        if self.timestamps {
            out.extend_from_slice(ts.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(&content);
        out.push(b'\n');
        Some(out)
    }
}

/// Where one container's logs are: `<pod dir>/logs/<container>/<n>.log` and the attempt's
/// exit marker `<pod dir>/containers/<container>/<n>/exit.json`.
#[derive(Clone, Debug)]
pub struct LogTarget {
    pub file: PathBuf,
    pub exit_marker: PathBuf,
    pub attempt_dir: PathBuf,
}

/// The log of the container's current attempt (or the one before it, `previous`).
pub fn find_target(pod_dir: &Path, container: &str, previous: bool) -> Result<LogTarget, LogError> {
    let dir = pod_dir.join("logs").join(container);
    let mut restarts: Vec<u32> = std::fs::read_dir(&dir)
        .map_err(|_| {
            LogError::NotFound(format!(
                "container {container:?} has no logs on this node yet"
            ))
        })?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
        .collect();
    restarts.sort_unstable();
    let n = if previous {
        let cur = restarts.pop();
        restarts.pop().filter(|_| cur.is_some()).ok_or_else(|| {
            LogError::BadRequest(format!(
                "previous terminated container {container:?} not found"
            ))
        })?
    } else {
        *restarts
            .last()
            .ok_or_else(|| LogError::NotFound(format!("container {container:?} has no logs yet")))?
    };
    let attempt_dir = pod_dir
        .join("containers")
        .join(container)
        .join(n.to_string());
    Ok(LogTarget {
        file: dir.join(format!("{n}.log")),
        exit_marker: attempt_dir.join("exit.json"),
        attempt_dir,
    })
}

/// Streams the logs of `target` as `req` asks (its `container`, `namespace`, `pod` and
/// `previous` fields are the caller's business: they chose `target`).
pub fn read_logs(
    target: LogTarget,
    req: &LogRequest,
    now: DateTime<Utc>,
) -> Result<LogStream, LogError> {
    let since = match (&req.since_time, req.since_seconds) {
        (Some(t), _) => Some(
            DateTime::parse_from_rfc3339(t)
                .map_err(|e| LogError::BadRequest(format!("sinceTime {t:?}: {e}")))?
                .with_timezone(&Utc),
        ),
        (None, Some(s)) => Some(
            now - chrono::Duration::seconds(
                i64::try_from(s)
                    .unwrap_or(i64::MAX / 1000)
                    .min(i64::MAX / 1000),
            ),
        ),
        (None, None) => None,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(16);
    let req = req.clone();
    std::thread::Builder::new()
        .name("shoal-logs".into())
        .spawn(move || {
            let mut reader = Reader {
                fmt: Formatter {
                    since,
                    timestamps: req.timestamps,
                    open: None,
                },
                budget: req.limit_bytes.unwrap_or(u64::MAX),
                tx,
            };
            if let Err(e) = reader.run(&target, req.tail_lines, req.follow) {
                let _ = reader.tx.blocking_send(Err(e));
            }
        })
        .map_err(|e| LogError::Io {
            path: "log reader thread".into(),
            source: e,
        })?;
    Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })))
}

struct Reader {
    fmt: Formatter,
    budget: u64,
    tx: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
}

impl Reader {
    /// Sends one output line; false once the reader should stop (limit reached, client gone).
    fn send(&mut self, mut line: Vec<u8>) -> bool {
        if self.budget == 0 {
            return false;
        }
        if line.len() as u64 > self.budget {
            line.truncate(self.budget as usize);
        }
        self.budget -= line.len() as u64;
        self.tx.blocking_send(Ok(bytes::Bytes::from(line))).is_ok() && self.budget > 0
    }

    fn run(&mut self, target: &LogTarget, tail: Option<u64>, follow: bool) -> std::io::Result<()> {
        // Existing content: the rotated file, then the current one.
        let mut lines: VecDeque<Vec<u8>> = VecDeque::new();
        let keep = tail.map(|t| usize::try_from(t).unwrap_or(usize::MAX));
        let collect = |out: Vec<u8>, lines: &mut VecDeque<Vec<u8>>| {
            lines.push_back(out);
            if keep.is_some_and(|k| lines.len() > k) {
                lines.pop_front();
            }
        };
        if let Ok(bytes) = std::fs::read(rotated_path(&target.file)) {
            for l in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                if let Some(out) = self.fmt.push(l) {
                    collect(out, &mut lines);
                }
            }
        }
        let mut file = match File::open(&target.file) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !follow => {
                return self.flush(lines)
            }
            Err(e) => return Err(e),
        };
        let mut pending = Vec::new();
        read_new(&mut file, &mut pending)?;
        let complete = pending
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        for l in pending[..complete]
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
        {
            if let Some(out) = self.fmt.push(l) {
                collect(out, &mut lines);
            }
        }
        pending.drain(..complete);
        let go_on = self.flush_lines(lines);
        if !follow || !go_on {
            return Ok(());
        }
        self.follow(target, file, pending)
    }

    fn flush(&mut self, lines: VecDeque<Vec<u8>>) -> std::io::Result<()> {
        self.flush_lines(lines);
        Ok(())
    }

    fn flush_lines(&mut self, lines: VecDeque<Vec<u8>>) -> bool {
        for l in lines {
            if !self.send(l) {
                return false;
            }
        }
        true
    }

    /// Tails the file until the attempt has exited (or is gone) and no more output comes;
    /// follows a rotation to the new file.
    fn follow(
        &mut self,
        target: &LogTarget,
        mut file: File,
        mut pending: Vec<u8>,
    ) -> std::io::Result<()> {
        loop {
            let exited = target.exit_marker.exists() || !target.attempt_dir.exists();
            let got = read_new(&mut file, &mut pending)?;
            let complete = pending
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            let ready: Vec<Vec<u8>> = pending[..complete]
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .filter_map(|l| self.fmt.push(l))
                .collect();
            pending.drain(..complete);
            for l in ready {
                if !self.send(l) {
                    return Ok(());
                }
            }
            if got > 0 {
                continue;
            }
            // Rotated: the path now names a new file; what we hold is complete.
            if let (Ok(cur), Ok(ours)) = (std::fs::metadata(&target.file), file.metadata()) {
                if cur.ino() != ours.ino() {
                    file = File::open(&target.file)?;
                    continue;
                }
            }
            if exited || self.tx.is_closed() {
                return Ok(());
            }
            std::thread::sleep(FOLLOW_POLL);
        }
    }
}

/// Appends what was written to `file` since the last read (at most 4 MiB at a time).
fn read_new(file: &mut File, into: &mut Vec<u8>) -> std::io::Result<usize> {
    let pos = file.stream_position()?;
    let len = file.metadata()?.len();
    if len < pos {
        file.seek(SeekFrom::Start(0))?;
    }
    let before = into.len();
    file.take(4 << 20).read_to_end(into)?;
    Ok(into.len() - before)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn at(s: u32) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&format!("2026-11-29T09:00:{s:02}.123456789Z"))
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn writer_formats_cri_lines_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut w = LogWriter::open(&path, 100).unwrap();
        w.write_record(at(0), "stdout", false, b"hello").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "2026-11-29T09:00:00.123456789Z stdout F hello\n"
        );
        w.write_record(at(1), "stderr", true, b"a-long-partial-line-of-output")
            .unwrap();
        w.write_record(at(2), "stderr", false, b"end").unwrap();
        let rotated = std::fs::read_to_string(rotated_path(&path)).unwrap();
        assert!(rotated.contains("stderr P a-long"), "{rotated}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "2026-11-29T09:00:02.123456789Z stderr F end\n"
        );
    }

    #[test]
    fn copier_splits_lines_and_marks_partials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let w = std::sync::Mutex::new(LogWriter::open(&path, MAX_LOG_FILE).unwrap());
        let mut input = b"one\ntwo\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE + 5));
        input.extend_from_slice(b"\nlast-no-newline");
        copy_stream(&input[..], "stdout", &w, || at(3));
        let text = std::fs::read_to_string(&path).unwrap();
        let tags: Vec<&str> = text.lines().map(|l| l.split(' ').nth(2).unwrap()).collect();
        assert_eq!(tags, ["F", "F", "P", "F", "F"]);
        assert!(text.ends_with("stdout F last-no-newline\n"));
    }

    async fn collect(s: LogStream) -> String {
        let parts: Vec<_> = s.collect().await;
        parts
            .into_iter()
            .map(|p| String::from_utf8(p.unwrap().to_vec()).unwrap())
            .collect()
    }

    fn setup() -> (tempfile::TempDir, LogTarget) {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs/c");
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::create_dir_all(dir.path().join("containers/c/1")).unwrap();
        std::fs::write(logs.join("0.log"), "2026-11-29T09:00:00.1Z stdout F old\n").unwrap();
        let mut w = LogWriter::open(&logs.join("1.log"), MAX_LOG_FILE).unwrap();
        for (i, l) in ["a", "b", "c"].iter().enumerate() {
            w.write_record(at(i as u32 + 10), "stdout", false, l.as_bytes())
                .unwrap();
        }
        w.write_record(at(20), "stderr", true, b"par").unwrap();
        w.write_record(at(21), "stderr", false, b"tial").unwrap();
        let target = find_target(dir.path(), "c", false).unwrap();
        (dir, target)
    }

    #[tokio::test]
    async fn reader_options() {
        let (dir, target) = setup();
        let req = LogRequest::default();
        assert_eq!(
            collect(read_logs(target.clone(), &req, at(30)).unwrap()).await,
            "a\nb\nc\npartial\n"
        );
        let tail = LogRequest {
            tail_lines: Some(2),
            ..Default::default()
        };
        assert_eq!(
            collect(read_logs(target.clone(), &tail, at(30)).unwrap()).await,
            "c\npartial\n"
        );
        let ts = LogRequest {
            timestamps: true,
            tail_lines: Some(1),
            ..Default::default()
        };
        assert_eq!(
            collect(read_logs(target.clone(), &ts, at(30)).unwrap()).await,
            "2026-11-29T09:00:20.123456789Z partial\n"
        );
        let since = LogRequest {
            since_seconds: Some(18),
            ..Default::default()
        };
        assert_eq!(
            collect(read_logs(target.clone(), &since, at(30)).unwrap()).await,
            "c\npartial\n"
        );
        let since_t = LogRequest {
            since_time: Some("2026-11-29T09:00:11Z".into()),
            ..Default::default()
        };
        assert_eq!(
            collect(read_logs(target.clone(), &since_t, at(30)).unwrap()).await,
            "b\nc\npartial\n"
        );
        let limit = LogRequest {
            limit_bytes: Some(3),
            ..Default::default()
        };
        assert_eq!(
            collect(read_logs(target.clone(), &limit, at(30)).unwrap()).await,
            "a\nb"
        );
        let prev = find_target(dir.path(), "c", true).unwrap();
        assert_eq!(
            collect(read_logs(prev, &req, at(30)).unwrap()).await,
            "old\n"
        );
        assert!(find_target(dir.path(), "nope", false).is_err());
        std::fs::remove_file(dir.path().join("logs/c/0.log")).unwrap();
        assert!(matches!(
            find_target(dir.path(), "c", true),
            Err(LogError::BadRequest(_))
        ));
    }

    #[tokio::test]
    async fn follow_ends_when_the_attempt_exits_and_crosses_a_rotation() {
        let (_dir, target) = setup();
        let req = LogRequest {
            follow: true,
            tail_lines: Some(1),
            ..Default::default()
        };
        let mut stream = read_logs(target.clone(), &req, at(30)).unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), "partial\n");
        let mut w = LogWriter::open(&target.file, 200).unwrap();
        w.write_record(at(40), "stdout", false, b"after-rotation")
            .unwrap();
        w.write_record(at(41), "stdout", false, b"more").unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), "after-rotation\n");
        assert_eq!(stream.next().await.unwrap().unwrap(), "more\n");
        std::fs::write(&target.exit_marker, "{}").unwrap();
        let rest = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("follow ends");
        assert!(rest.is_none());
    }
}
