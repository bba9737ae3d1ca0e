//! `shoal image ls|pull|import|rm`: the image store of the node the kubeconfig context points
//! at. `pull` renders the server's progress events live: one bar per blob and a total (bytes,
//! rate, ETA) on a terminal, plain lines otherwise.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Subcommand;
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{client, ClientArgs};
use crate::api::ImageSummary;
use crate::model::image::{Credentials, PullEvent, PullRequest};

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Load an image archive (OCI image layout tar or `docker save` tar) into the node's store.
    Import {
        /// The archive (`-` is not supported: the upload is streamed from the file).
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the images in the node's store.
    Ls {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Pull an image into the node's store (from peers that hold its blobs, else its registry).
    Pull {
        /// The image (`busybox`, `registry:5000/repo:tag`, `repo@sha256:<hex>`).
        reference: String,
        /// The registry user name (the password comes from --password-stdin).
        #[arg(long, requires = "password_stdin")]
        username: Option<String>,
        /// Read the registry password from the first line of stdin.
        #[arg(long, requires = "username")]
        password_stdin: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove images from the node's store (refused while a container uses them).
    Rm {
        /// References (`repo:tag`, or `repo@sha256:<hex>` for every tag of that manifest).
        #[arg(required = true)]
        references: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub fn run(cmd: ImageCommand) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cmd {
        ImageCommand::Import { file, client } => {
            check_archive(&file)?;
            let body = rt.block_on(client::post_file(
                &client,
                "/shoal/v1/images/import",
                &file,
                "application/x-tar",
            ))?;
            let images: Vec<ImageSummary> = serde_json::from_slice(&body)
                .context("the server's answer is not an image list")?;
            for i in &images {
                println!("imported {} {} ({})", i.reference, i.digest, human(i.size));
            }
            Ok(())
        }
        ImageCommand::Ls { client } => {
            let body = rt.block_on(client::get(&client, "/shoal/v1/images"))?;
            let images: Vec<ImageSummary> = serde_json::from_slice(&body)
                .context("the server's answer is not an image list")?;
            print!("{}", table(&images));
            Ok(())
        }
        ImageCommand::Pull {
            reference,
            username,
            password_stdin,
            client,
        } => {
            let credentials = match username {
                Some(username) if password_stdin => Some(Credentials {
                    username,
                    password: read_password(std::io::stdin().lock())?,
                }),
                _ => None,
            };
            let req = PullRequest {
                reference,
                credentials,
            };
            let image = rt.block_on(pull(&client, &req))?;
            println!(
                "pulled {} {} ({})",
                image.reference,
                image.digest,
                human(image.size)
            );
            Ok(())
        }
        ImageCommand::Rm { references, client } => {
            let mut failed = 0;
            for r in &references {
                let path = format!("/shoal/v1/images?reference={}", encode_query_value(r));
                match rt.block_on(client::delete(&client, &path)) {
                    Ok(_) => println!("removed {r}"),
                    Err(e) => {
                        eprintln!("error: {r}: {e:#}");
                        failed += 1;
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} of {} images not removed", references.len());
            }
            Ok(())
        }
    }
}

/// The password: the first line of `input`, without its line ending.
fn read_password(mut input: impl std::io::BufRead) -> anyhow::Result<String> {
    let mut line = String::new();
    input
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        bail!("--password-stdin: stdin holds no password");
    }
    Ok(password.to_string())
}

/// `value` form-encoded for a query string (`form_urlencoded`: what the server's query parser
/// decodes).
fn encode_query_value(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// Longest progress line accepted from the server.
const MAX_EVENT_LINE: usize = 1 << 20;

/// Splits a byte stream into lines (`\n`-terminated; blank lines dropped), bounded in length.
#[derive(Default)]
struct LineBuffer {
    partial: Vec<u8>,
}

impl LineBuffer {
    fn push(&mut self, mut chunk: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
        let mut lines = Vec::new();
        while let Some(i) = chunk.iter().position(|b| *b == b'\n') {
            self.partial.extend_from_slice(&chunk[..i]);
            let line = std::mem::take(&mut self.partial);
            if !line.iter().all(u8::is_ascii_whitespace) {
                lines.push(line);
            }
            chunk = &chunk[i + 1..];
        }
        self.partial.extend_from_slice(chunk);
        if self.partial.len() > MAX_EVENT_LINE {
            bail!("the server sent a progress line longer than {MAX_EVENT_LINE} bytes");
        }
        Ok(lines)
    }
}

/// Posts the pull and renders its events until `done` (the image) or `error`.
async fn pull(client: &ClientArgs, req: &PullRequest) -> anyhow::Result<ImageSummary> {
    let resp = client::post_json_streaming(client, "/shoal/v1/images/pull", req).await?;
    let mut view: Box<dyn PullView> = if std::io::stderr().is_terminal() {
        Box::new(Bars::new(ProgressDrawTarget::stderr()))
    } else {
        Box::new(Lines::new(std::io::stderr()))
    };
    let mut lines = LineBuffer::default();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                view.failed();
                return Err(anyhow!(
                    "pulling {}: the connection broke: {e}",
                    req.reference
                ));
            }
        };
        for line in lines.push(&chunk)? {
            // Events this client does not know (a newer server) are skipped.
            let Ok(event) = serde_json::from_slice::<PullEvent>(&line) else {
                continue;
            };
            view.event(&event, Instant::now());
            match event {
                PullEvent::Done { image } => return Ok(image),
                PullEvent::Error { message } => {
                    view.failed();
                    bail!("pulling {}: {message}", req.reference)
                }
                _ => {}
            }
        }
    }
    view.failed();
    bail!(
        "pulling {}: the server closed the connection before the pull finished",
        req.reference
    )
}

/// What is known of each blob of a pull.
#[derive(Default)]
struct Tally {
    /// Blobs of the manifest and their sizes, from `resolved`.
    blobs: Vec<(String, u64)>,
    /// digest → (bytes done, size, source).
    seen: BTreeMap<String, (u64, u64, String)>,
}

impl Tally {
    /// Records a `blob` event; returns whether it is the first for this digest and whether the
    /// source changed.
    fn blob(&mut self, digest: &str, done: u64, total: u64, source: &str) -> (bool, bool) {
        match self.seen.get_mut(digest) {
            None => {
                self.seen
                    .insert(digest.to_string(), (done, total, source.to_string()));
                (true, false)
            }
            Some(entry) => {
                let changed = entry.2 != source;
                *entry = (done.min(total), total, source.to_string());
                (false, changed)
            }
        }
    }

    /// Bytes to transfer: every blob's size but those already in the store.
    fn transfer_total(&self) -> u64 {
        let mut sizes: BTreeMap<&str, u64> =
            self.blobs.iter().map(|(d, s)| (d.as_str(), *s)).collect();
        for (digest, (_, total, _)) in &self.seen {
            sizes.insert(digest, *total);
        }
        sizes
            .iter()
            .filter(|(d, _)| self.seen.get(**d).is_none_or(|(_, _, s)| s != "local"))
            .map(|(_, size)| size)
            .sum()
    }

    /// Bytes transferred so far (blobs already in the store not counted).
    fn transferred(&self) -> u64 {
        self.seen
            .values()
            .filter(|(_, _, source)| source != "local")
            .map(|(done, _, _)| *done)
            .sum()
    }

    fn present(&self) -> usize {
        self.seen.values().filter(|(_, _, s)| s == "local").count()
    }
}

/// `sha256:0123456789ab` → `0123456789ab`: the short form docker prints.
fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.get(..12).unwrap_or(hex)
}

/// `1 blob`, `3 blobs`.
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn rate(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return "-".into();
    }
    format!("{}/s", human((bytes as f64 / secs) as u64))
}

/// How a pull's progress is shown.
trait PullView {
    fn event(&mut self, event: &PullEvent, now: Instant);
    /// The pull failed or broke off: stop drawing.
    fn failed(&mut self);
}

/// Plain lines for logs and pipes: a line when a blob starts, changes source or completes, a
/// total every [`Lines::EVERY`], and a summary.
struct Lines<W: Write> {
    out: W,
    tally: Tally,
    started: Option<Instant>,
    last_report: Option<Instant>,
    blob_started: BTreeMap<String, Instant>,
    /// Blobs whose completion was reported.
    completed: std::collections::BTreeSet<String>,
}

impl<W: Write> Lines<W> {
    const EVERY: Duration = Duration::from_secs(10);

    fn new(out: W) -> Self {
        Lines {
            out,
            tally: Tally::default(),
            started: None,
            last_report: None,
            blob_started: BTreeMap::new(),
            completed: Default::default(),
        }
    }

    fn line(&mut self, text: String) {
        let _ = writeln!(self.out, "{text}");
    }
}

impl<W: Write> PullView for Lines<W> {
    fn event(&mut self, event: &PullEvent, now: Instant) {
        let started = *self.started.get_or_insert(now);
        let last_report = *self.last_report.get_or_insert(now);
        match event {
            PullEvent::Resolved { digest, blobs } => {
                let size: u64 = blobs.iter().map(|(_, s)| s).sum();
                self.tally.blobs = blobs.clone();
                self.line(format!(
                    "resolved {digest}: {}, {}",
                    count(blobs.len(), "blob"),
                    human(size)
                ));
            }
            PullEvent::Blob {
                digest,
                done,
                total,
                source,
            } => {
                let (first, changed) = self.tally.blob(digest, *done, *total, source);
                let id = short(digest).to_string();
                if first && source == "local" {
                    self.completed.insert(digest.clone());
                    self.line(format!("{id}: already present"));
                    return;
                }
                if first || changed {
                    self.blob_started.insert(digest.clone(), now);
                    self.completed.remove(digest);
                }
                if done >= total {
                    if self.completed.insert(digest.clone()) {
                        let since = self.blob_started.get(digest).copied().unwrap_or(now);
                        let took = now.duration_since(since);
                        self.line(format!(
                            "{id}: {} from {source} in {:.1}s ({})",
                            human(*total),
                            took.as_secs_f64(),
                            rate(*total, took)
                        ));
                    }
                } else if first || changed {
                    self.line(format!("{id}: fetching {} from {source}", human(*total)));
                } else if now.duration_since(last_report) >= Self::EVERY {
                    self.last_report = Some(now);
                    let moved = self.tally.transferred();
                    self.line(format!(
                        "  {} of {} ({})",
                        human(moved),
                        human(self.tally.transfer_total()),
                        rate(moved, now.duration_since(started))
                    ));
                }
            }
            PullEvent::Unpacking => self.line("unpacking layers".into()),
            PullEvent::Done { .. } => {
                let moved = self.tally.transferred();
                let took = now.duration_since(started);
                self.line(format!(
                    "fetched {} in {:.1}s ({}); {} already present",
                    human(moved),
                    took.as_secs_f64(),
                    rate(moved, took),
                    count(self.tally.present(), "blob")
                ));
            }
            PullEvent::Error { .. } => {}
        }
    }

    fn failed(&mut self) {}
}

/// indicatif bars: one per blob being fetched and a total (bytes, rate, ETA) below them.
struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
    blobs: BTreeMap<String, ProgressBar>,
    tally: Tally,
}

impl Bars {
    fn new(target: ProgressDrawTarget) -> Self {
        let multi = MultiProgress::with_draw_target(target);
        let total = multi.add(ProgressBar::new(0).with_style(style(
            "{prefix:>12} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} eta {eta} {msg}",
        )));
        total.set_prefix("total");
        total.set_message("resolving");
        total.enable_steady_tick(Duration::from_millis(200));
        Bars {
            multi,
            total,
            blobs: BTreeMap::new(),
            tally: Tally::default(),
        }
    }

    fn blob_bar(&mut self, digest: &str, total: u64) -> ProgressBar {
        if let Some(bar) = self.blobs.get(digest) {
            return bar.clone();
        }
        let bar = self.multi.insert_before(
            &self.total,
            ProgressBar::new(total).with_style(style(
                "{prefix:>12} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {msg}",
            )),
        );
        bar.set_prefix(short(digest).to_string());
        self.blobs.insert(digest.to_string(), bar.clone());
        bar
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl PullView for Bars {
    fn event(&mut self, event: &PullEvent, _now: Instant) {
        match event {
            PullEvent::Resolved { digest, blobs } => {
                self.tally.blobs = blobs.clone();
                self.total.set_length(self.tally.transfer_total());
                self.total.set_message(short(digest).to_string());
            }
            PullEvent::Blob {
                digest,
                done,
                total,
                source,
            } => {
                let (first, _) = self.tally.blob(digest, *done, *total, source);
                self.total.set_length(self.tally.transfer_total());
                self.total.set_position(self.tally.transferred());
                if first && source == "local" {
                    return;
                }
                let bar = self.blob_bar(digest, *total);
                bar.set_length(*total);
                bar.set_position(*done);
                if done >= total {
                    bar.finish_with_message(format!("done ({source})"));
                } else {
                    bar.set_message(source.clone());
                }
            }
            PullEvent::Unpacking => self.total.set_message("unpacking"),
            PullEvent::Done { .. } => {
                let present = self.tally.present();
                self.total.finish_with_message(if present > 0 {
                    format!("done; {} already present", count(present, "blob"))
                } else {
                    "done".to_string()
                });
            }
            PullEvent::Error { .. } => {}
        }
    }

    fn failed(&mut self) {
        for bar in self.blobs.values().filter(|b| !b.is_finished()) {
            bar.abandon();
        }
        self.total.abandon_with_message("failed");
    }
}

/// Refuses what cannot be an archive before uploading it.
fn check_archive(file: &Path) -> anyhow::Result<()> {
    let meta = std::fs::metadata(file).with_context(|| format!("{}", file.display()))?;
    if !meta.is_file() {
        bail!("{} is not a file", file.display());
    }
    let mut head = [0u8; 512];
    let n = {
        use std::io::Read;
        let mut f = std::fs::File::open(file).with_context(|| format!("{}", file.display()))?;
        let mut n = 0;
        while n < head.len() {
            let k = f.read(&mut head[n..])?;
            if k == 0 {
                break;
            }
            n += k;
        }
        n
    };
    let gzip = head[..n].starts_with(&[0x1f, 0x8b]);
    let tar = n == 512 && &head[257..262] == b"ustar";
    if !gzip && !tar {
        bail!(
            "{} is not a tar archive (expected an OCI image layout tar or a `docker save` tar)",
            file.display()
        );
    }
    Ok(())
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `REFERENCE  DIGEST  SIZE`, columns padded like kubectl's.
pub fn table(images: &[ImageSummary]) -> String {
    let rows: Vec<[String; 3]> = images
        .iter()
        .map(|i| {
            let short = i.digest.get(..19).unwrap_or(&i.digest).to_string();
            [i.reference.clone(), short, human(i.size)]
        })
        .collect();
    let header = ["REFERENCE".to_string(), "DIGEST".into(), "SIZE".into()];
    let w0 = rows
        .iter()
        .chain([&header])
        .map(|r| r[0].len())
        .max()
        .unwrap_or(0);
    let w1 = rows
        .iter()
        .chain([&header])
        .map(|r| r[1].len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for r in std::iter::once(&header).chain(rows.iter()) {
        out.push_str(&format!("{:<w0$}   {:<w1$}   {}\n", r[0], r[1], r[2]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(&[
            ImageSummary {
                reference: "shoal.test/busybox:1".into(),
                digest: format!("sha256:{}", "a".repeat(64)),
                size: 1_300_000,
            },
            ImageSummary {
                reference: "x:1".into(),
                digest: "sha256:bb".into(),
                size: 10,
            },
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("REFERENCE              DIGEST"));
        assert_eq!(
            lines[1],
            "shoal.test/busybox:1   sha256:aaaaaaaaaaaa   1.2 MiB"
        );
        assert_eq!(
            lines[2],
            "x:1                    sha256:bb             10 B"
        );
    }

    #[test]
    fn progress_lines_are_split_and_bounded() {
        let mut b = LineBuffer::default();
        assert!(b.push(b"{\"a\":").unwrap().is_empty());
        assert_eq!(
            b.push(b"1}\n\n  \n{\"b\"").unwrap(),
            vec![b"{\"a\":1}".to_vec()]
        );
        assert_eq!(b.push(b":2}\n").unwrap(), vec![b"{\"b\":2}".to_vec()]);
        let long = vec![b'x'; MAX_EVENT_LINE + 1];
        assert!(b
            .push(&long)
            .unwrap_err()
            .to_string()
            .contains("longer than"));
    }

    #[test]
    fn references_are_percent_encoded_for_the_query() {
        assert_eq!(
            encode_query_value("reg:5000/a/b@sha256:ab"),
            "reg%3A5000%2Fa%2Fb%40sha256%3Aab"
        );
        assert_eq!(encode_query_value("a b&c=d"), "a+b%26c%3Dd");
        for value in ["reg:5000/a/b@sha256:ab", "a b&c=d+e%", "x_y-z.1~", "ü"] {
            let query = format!("reference={}", encode_query_value(value));
            let decoded: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
            assert_eq!(decoded, [("reference".to_string(), value.to_string())]);
        }
    }

    #[test]
    fn password_is_the_first_line_of_stdin() {
        assert_eq!(read_password(&b"s3cret\r\nrest"[..]).unwrap(), "s3cret");
        assert_eq!(read_password(&b"with space"[..]).unwrap(), "with space");
        assert!(read_password(&b"\n"[..]).is_err());
        assert!(read_password(&b""[..]).is_err());
    }

    #[test]
    fn credentials_need_both_flags() {
        use clap::Parser;
        let parse = |args: &[&str]| {
            super::super::Cli::try_parse_from(
                ["shoal", "image", "pull", "reg:5000/app:1"]
                    .iter()
                    .chain(args),
            )
        };
        assert!(parse(&["--username", "u"]).is_err());
        assert!(parse(&["--password-stdin"]).is_err());
        assert!(parse(&["--username", "u", "--password-stdin"]).is_ok());
        assert!(parse(&["--context", "n2"]).is_ok());
        assert!(super::super::Cli::try_parse_from(["shoal", "image", "rm"]).is_err());
    }

    fn blob(digest: &str, done: u64, total: u64, source: &str) -> PullEvent {
        PullEvent::Blob {
            digest: digest.into(),
            done,
            total,
            source: source.into(),
        }
    }

    #[test]
    fn plain_progress_names_sources_sizes_and_rates() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let c = format!("sha256:{}", "c".repeat(64));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut out = Vec::new();
        {
            let mut view = Lines::new(&mut out);
            let events = [
                (
                    0,
                    PullEvent::Resolved {
                        digest: format!("sha256:{}", "d".repeat(64)),
                        blobs: vec![(a.clone(), 100), (b.clone(), 4 << 20), (c.clone(), 2 << 20)],
                    },
                ),
                (0, blob(&a, 100, 100, "local")),
                (0, blob(&b, 0, 4 << 20, "peer n2")),
                (500, blob(&b, 1 << 20, 4 << 20, "peer n2")),
                (11_000, blob(&b, 2 << 20, 4 << 20, "peer n2")),
                // The peer failed: the registry takes over.
                (11_000, blob(&b, 0, 4 << 20, "registry")),
                (12_000, blob(&b, 4 << 20, 4 << 20, "registry")),
                (12_000, blob(&b, 4 << 20, 4 << 20, "registry")),
                (12_000, blob(&c, 2 << 20, 2 << 20, "registry")),
                (12_500, PullEvent::Unpacking),
            ];
            for (ms, e) in &events {
                view.event(e, at(*ms));
            }
            view.event(
                &PullEvent::Done {
                    image: ImageSummary {
                        reference: "reg:5000/app:1".into(),
                        digest: "sha256:dd".into(),
                        size: 6 << 20,
                    },
                },
                at(13_000),
            );
        }
        let text = String::from_utf8(out).unwrap();
        let expected = "\
resolved sha256:dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd: 3 blobs, 6.0 MiB
aaaaaaaaaaaa: already present
bbbbbbbbbbbb: fetching 4.0 MiB from peer n2
  2.0 MiB of 6.0 MiB (186.2 KiB/s)
bbbbbbbbbbbb: fetching 4.0 MiB from registry
bbbbbbbbbbbb: 4.0 MiB from registry in 1.0s (4.0 MiB/s)
cccccccccccc: 2.0 MiB from registry in 0.0s (-)
unpacking layers
fetched 6.0 MiB in 13.0s (472.6 KiB/s); 1 blob already present
";
        assert_eq!(text, expected);
    }

    #[test]
    fn bars_count_transferred_bytes_only() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let now = Instant::now();
        let mut bars = Bars::new(ProgressDrawTarget::hidden());
        bars.event(
            &PullEvent::Resolved {
                digest: "sha256:dd".into(),
                blobs: vec![(a.clone(), 100), (b.clone(), 1000)],
            },
            now,
        );
        assert_eq!(bars.total.length(), Some(1100));
        bars.event(&blob(&a, 100, 100, "local"), now);
        bars.event(&blob(&b, 400, 1000, "peer n2"), now);
        assert_eq!(bars.total.length(), Some(1000));
        assert_eq!(bars.total.position(), 400);
        assert_eq!(bars.blobs.len(), 1, "no bar for a blob already present");
        assert_eq!(bars.blobs[&b].message(), "peer n2");
        bars.event(&blob(&b, 1000, 1000, "peer n2"), now);
        assert!(bars.blobs[&b].is_finished());
        bars.failed();
        assert!(bars.total.is_finished());
    }

    /// A plain-HTTP stand-in for the agent's image routes on loopback, and a kubeconfig for it.
    async fn fake_server(
        dir: &Path,
    ) -> (ClientArgs, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use axum::http::{HeaderMap, StatusCode, Uri};
        use axum::response::IntoResponse;
        crate::install_crypto_provider();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let pull_seen = seen.clone();
        let rm_seen = seen.clone();
        let app = axum::Router::new()
            .route(
                "/shoal/v1/images/pull",
                axum::routing::post(move |headers: HeaderMap, body: String| async move {
                    let auth = headers["authorization"].to_str().unwrap().to_string();
                    pull_seen.lock().unwrap().push(format!("{auth} {body}"));
                    let req: PullRequest = serde_json::from_str(&body).unwrap();
                    let resolved = PullEvent::Resolved {
                        digest: "sha256:dd".into(),
                        blobs: vec![("sha256:aa".into(), 5)],
                    };
                    let mut events = vec![resolved, blob("sha256:aa", 5, 5, "registry")];
                    match req.reference.as_str() {
                        "reg:5000/denied:1" => events.push(PullEvent::Error {
                            message: "unauthorized: authentication required".into(),
                        }),
                        "reg:5000/cut:1" => {}
                        _ => events.push(PullEvent::Done {
                            image: ImageSummary {
                                reference: req.reference.clone(),
                                digest: "sha256:dd".into(),
                                size: 5,
                            },
                        }),
                    }
                    let body: String = events
                        .iter()
                        .map(|e| serde_json::to_string(e).unwrap() + "\n")
                        .collect();
                    ([("content-type", "application/x-ndjson")], body).into_response()
                }),
            )
            .route(
                "/shoal/v1/images",
                axum::routing::delete(move |uri: Uri| async move {
                    let query = uri.query().unwrap_or_default().to_string();
                    rm_seen.lock().unwrap().push(query.clone());
                    if query.contains("busy") {
                        let status = serde_json::json!({
                            "kind": "Status", "code": 409,
                            "message": "image is in use by container default/web/app",
                        });
                        (StatusCode::CONFLICT, axum::Json(status)).into_response()
                    } else {
                        axum::Json(serde_json::json!({"kind": "Status", "status": "Success"}))
                            .into_response()
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
                 clusters: [{{name: k, cluster: {{server: 'http://{addr}'}}}}]\n\
                 users: [{{name: u, user: {{token: t0k}}}}]\n\
                 contexts: [{{name: c, context: {{cluster: k, user: u}}}}]\n"
            ),
        )
        .unwrap();
        let args = ClientArgs {
            kubeconfig: Some(kubeconfig),
            context: None,
        };
        (args, seen)
    }

    #[tokio::test]
    async fn pull_and_rm_talk_to_the_routes() {
        let dir = tempfile::tempdir().unwrap();
        let (args, seen) = fake_server(dir.path()).await;
        let req = PullRequest {
            reference: "reg:5000/app:1".into(),
            credentials: Some(Credentials {
                username: "u".into(),
                password: "p".into(),
            }),
        };
        let image = pull(&args, &req).await.unwrap();
        assert_eq!(image.reference, "reg:5000/app:1");
        let sent = seen.lock().unwrap()[0].clone();
        assert!(sent.starts_with("Bearer t0k {"), "{sent}");
        assert!(sent.contains(r#""password":"p""#), "{sent}");

        let denied = PullRequest {
            reference: "reg:5000/denied:1".into(),
            credentials: None,
        };
        let err = pull(&args, &denied).await.unwrap_err().to_string();
        assert_eq!(
            err,
            "pulling reg:5000/denied:1: unauthorized: authentication required"
        );
        let cut = PullRequest {
            reference: "reg:5000/cut:1".into(),
            credentials: None,
        };
        let err = pull(&args, &cut).await.unwrap_err().to_string();
        assert!(
            err.contains("closed the connection before the pull finished"),
            "{err}"
        );

        let path = format!(
            "/shoal/v1/images?reference={}",
            encode_query_value("reg:5000/busy:1")
        );
        let err = client::delete(&args, &path).await.unwrap_err().to_string();
        assert!(
            err.ends_with("409 Conflict: image is in use by container default/web/app"),
            "{err}"
        );
        assert_eq!(
            seen.lock().unwrap().last().unwrap(),
            "reference=reg%3A5000%2Fbusy%3A1"
        );
    }

    #[test]
    fn non_archives_are_refused_before_upload() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x.txt");
        std::fs::write(&p, b"hello").unwrap();
        assert!(check_archive(&p)
            .unwrap_err()
            .to_string()
            .contains("not a tar archive"));
        assert!(check_archive(&t.path().join("missing")).is_err());
        assert!(check_archive(t.path())
            .unwrap_err()
            .to_string()
            .contains("not a file"));
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_path("oci-layout").unwrap();
        h.set_size(2);
        h.set_cksum();
        b.append(&h, &b"{}"[..]).unwrap();
        let tarp = t.path().join("a.tar");
        std::fs::write(&tarp, b.into_inner().unwrap()).unwrap();
        check_archive(&tarp).unwrap();
    }
}
