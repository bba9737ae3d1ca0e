//! Image benchmarks (issue #4): pull + unpack of a multi-layer image from a loopback registry,
//! side by side with `skopeo copy` + `umoci unpack` of the same image; and the registry egress
//! when the nodes of an up netns testnet start the same new image at once. Each subcommand
//! prints a markdown section on stdout and `RESULT ...` lines that `benches/run.sh` collects;
//! progress goes to stderr. Nothing here asserts on time: it measures and reports.
//!
//! Run through `IMAGES_ONLY=1 benches/run.sh [quick|full]`; by hand:
//! `target/release/deps/images-* pull --runs 5` (needs docker-registry, skopeo, umoci, curl) or,
//! on a testnet that is up (`testnet/up.sh 5`, as root), `images-* egress --nodes 5 --rounds 3`.

/// The registry harness of the tests (`tests/support/registry.rs` and its `layout` module).
#[allow(dead_code)]
#[path = "../tests/support"]
mod support {
    pub mod registry;
}

use std::collections::BTreeMap;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use rand::RngCore as _;
use serde_json::{json, Value};
use shoal::runtime::image::pull::{NoPeers, PullConfig, PullEvent, PullRequest, Puller};
use shoal::runtime::image::ImageStore;

use support::registry::layout::{self, ConfigSpec, Entry, LayerSpec, OciLayout};
use support::registry::{self, Registry, RegistryOptions};

const MIB: usize = 1 << 20;

#[derive(Parser)]
#[command(about = "shoal image benchmarks (see benches/run.sh)")]
struct Cli {
    /// Scratch directory (image layouts, stores, bundles); a temporary one by default.
    #[arg(long)]
    work: Option<PathBuf>,
    #[command(subcommand)]
    what: What,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Content {
    Random,
    Files,
}

#[derive(Subcommand)]
enum What {
    /// Pull + unpack from a loopback registry into a fresh store, interleaved with
    /// `skopeo copy` + `umoci unpack` of the same image.
    Pull {
        /// Image size (compressed ≈ uncompressed: the layers are random data), MiB.
        #[arg(long, default_value_t = 50)]
        size_mib: usize,
        #[arg(long, default_value_t = 6)]
        layers: usize,
        /// Measured runs of each side (after one warm-up run each).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(long, default_value_t = 4)]
        seed: u64,
        /// `random`: files of at most 1 MiB of random data (gzip stores them, nothing to
        /// inflate); `files`: many small files (1-32 KiB) of compressible text, like a
        /// distribution's tree (size_mib is then the uncompressed size).
        #[arg(long, default_value = "random")]
        content: Content,
    },
    /// On an up testnet: push a new image to 10.77.0.1:5000, apply a Deployment with one
    /// replica per node (required anti-affinity), wait until all are Running, and count what
    /// the registry served (its log). Also with 1 replica; each round a fresh image.
    Egress {
        /// The `testnet/` directory of the up testnet.
        #[arg(long, default_value = "testnet")]
        testnet: PathBuf,
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 50)]
        size_mib: usize,
        /// Layers (one of them holds busybox).
        #[arg(long, default_value_t = 6)]
        layers: usize,
        /// Seconds to wait for all replicas to be Running.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let _tmp;
    let work = match cli.work {
        Some(w) => w,
        None => {
            _tmp = tempfile::tempdir().context("a scratch dir")?;
            _tmp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
    match cli.what {
        What::Pull {
            size_mib,
            layers,
            runs,
            seed,
            content,
        } => pull_bench(&work, size_mib, layers, runs, seed, content),
        What::Egress {
            testnet,
            nodes,
            rounds,
            size_mib,
            layers,
            timeout,
        } => egress_bench(
            &work,
            &testnet,
            nodes,
            rounds,
            size_mib,
            layers,
            Duration::from_secs(timeout),
        ),
    }
}

fn say(msg: &str) {
    eprintln!("[images] {msg}");
}

// ---- statistics ------------------------------------------------------------------------------

/// Median (mean of the middle two for an even count), min and max, in seconds.
fn summary(xs: &[f64]) -> (f64, f64, f64) {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (med, v[0], v[n - 1])
}

fn row(name: &str, xs: &[f64]) -> String {
    let (med, min, max) = summary(xs);
    let all: Vec<String> = xs.iter().map(|x| format!("{x:.2}")).collect();
    format!(
        "| {name} | {} | {med:.2} | {min:.2} | {max:.2} | {} |",
        xs.len(),
        all.join(", ")
    )
}

fn median(xs: &[f64]) -> f64 {
    summary(xs).0
}

/// Runs `cmd args`, failing with its output when it fails.
fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Seconds `cmd args` took (it must succeed).
fn timed(cmd: &str, args: &[&str]) -> Result<f64> {
    let t0 = Instant::now();
    run(cmd, args)?;
    Ok(t0.elapsed().as_secs_f64())
}

/// Flushes dirty pages (outside the timed parts), so one run's writeback does not land in the
/// next run's time.
fn sync() {
    let _ = Command::new("sync").status();
}

fn remove(dir: &Path) {
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            say(&format!("could not remove {}: {e}", dir.display()));
        }
    }
}

// ---- pull + unpack ---------------------------------------------------------------------------

/// The phases of one shoal pull, seconds from the start.
#[derive(Default, Clone, Copy)]
struct ShoalRun {
    /// Manifest fetched (the `Resolved` event).
    resolved: f64,
    /// The last blob's bytes all received.
    downloaded: f64,
    /// Every layer unpacked (the `Unpacking` event, sent after the last unpack).
    unpacked: f64,
    total: f64,
}

/// One side-by-side run of skopeo and umoci.
#[derive(Default, Clone, Copy)]
struct PeerRun {
    skopeo: f64,
    umoci: f64,
    umoci_raw: f64,
}

/// `n` layers of about `total_bytes` (uncompressed) together: files of 1-32 KiB of text drawn
/// from a small vocabulary (gzip gets it to about a third), 200 to a directory.
fn text_layers(total_bytes: usize, n: usize, seed: u64) -> Vec<LayerSpec> {
    use rand::{Rng as _, SeedableRng as _};
    const WORDS: [&str; 32] = [
        "the",
        "of",
        "and",
        "container",
        "image",
        "layer",
        "node",
        "pod",
        "registry",
        "blob",
        "digest",
        "sha256",
        "manifest",
        "config",
        "static",
        "int",
        "return",
        "struct",
        "fn",
        "let",
        "mut",
        "self",
        "if",
        "else",
        "for",
        "while",
        "match",
        "error",
        "0x7f",
        "{",
        "}",
        "\n",
    ];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let per_layer = total_bytes.div_ceil(n.max(1));
    (0..n.max(1))
        .map(|k| {
            let mut entries = vec![Entry::dir(&format!("usr{k}"))];
            let mut left = per_layer;
            let mut f = 0;
            while left > 0 {
                if f % 200 == 0 {
                    entries.push(Entry::dir(&format!("usr{k}/d{}", f / 200)));
                }
                let len = left.min(rng.gen_range(1024..32 * 1024));
                let mut data = String::with_capacity(len + 16);
                while data.len() < len {
                    data.push_str(WORDS[rng.gen_range(0..WORDS.len())]);
                    data.push(' ');
                }
                data.truncate(len);
                entries.push(Entry::file(
                    &format!("usr{k}/d{}/f{f}", f / 200),
                    data.as_bytes(),
                ));
                left -= len;
                f += 1;
            }
            LayerSpec::new(entries)
        })
        .collect()
}

fn pull_bench(
    work: &Path,
    size_mib: usize,
    n_layers: usize,
    runs: usize,
    seed: u64,
    content: Content,
) -> Result<()> {
    for (cmd, pkg) in [("skopeo", "skopeo"), ("umoci", "umoci")] {
        registry::require_command(cmd, pkg);
    }
    say("starting a loopback registry");
    let reg = Registry::start(RegistryOptions::default());
    let layout_dir = work.join("layout");
    remove(&layout_dir);
    say(&format!(
        "building a {size_mib} MiB image of {n_layers} gzip layers"
    ));
    let (layers, what) = match content {
        Content::Random => (
            layout::random_layers(size_mib * MIB, n_layers, seed),
            "random data (files ≤ 1 MiB)".to_string(),
        ),
        Content::Files => {
            let l = text_layers(size_mib * MIB, n_layers, seed);
            let files: usize = l.iter().map(|l| l.entries.len()).sum();
            (
                l,
                format!("{files} small files and dirs of text, {size_mib} MiB uncompressed"),
            )
        }
    };
    let image = layout::build_layout(&layout_dir, "bench", &layers, &ConfigSpec::default());
    drop(layers);
    let image_bytes: u64 = image.manifest.size
        + image.config.size
        + image.layers.iter().map(|l| l.blob.size).sum::<u64>();
    reg.push_oci_layout(&layout_dir, "bench", "bench/pull:1", None, None);
    let reference = reg.reference("bench/pull:1");
    let src = format!("docker://{reference}");
    let diff_ids: Vec<(String, String)> = image
        .layers
        .iter()
        .map(|l| {
            (
                l.blob.digest.trim_start_matches("sha256:").to_string(),
                l.diff_id.trim_start_matches("sha256:").to_string(),
            )
        })
        .collect();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("a tokio runtime")?;
    let shoal_once = |i: usize| -> Result<(ShoalRun, f64)> {
        let dir = work.join(format!("store-{i}"));
        remove(&dir);
        sync();
        let r = rt.block_on(shoal_pull(&dir, &reference, &reg.host()))?;
        // Unpack alone, one layer after another, the blobs already local (page cache warm).
        let store = ImageStore::open(&dir)?;
        remove(&dir.join("layers"));
        std::fs::create_dir_all(dir.join("layers"))?;
        sync();
        let t0 = Instant::now();
        for (blob, diff) in &diff_ids {
            store.ensure_layer(blob, diff)?;
        }
        let unpack_only = t0.elapsed().as_secs_f64();
        remove(&dir);
        Ok((r, unpack_only))
    };
    let peer_once = |i: usize| -> Result<PeerRun> {
        let oci = work.join(format!("oci-{i}"));
        let bundle = work.join(format!("bundle-{i}"));
        let raw = work.join(format!("raw-{i}"));
        for d in [&oci, &bundle, &raw] {
            remove(d);
        }
        sync();
        let dest = format!("oci:{}:bench", oci.display());
        let skopeo = timed(
            "skopeo",
            &["copy", "--quiet", "--src-tls-verify=false", &src, &dest],
        )?;
        let image = format!("{}:bench", oci.display());
        let bundle_s = bundle.display().to_string();
        // As root umoci keeps the layers' owners; otherwise it needs --rootless.
        let rootless = !nix::unistd::geteuid().is_root();
        let mut args = vec!["unpack", "--image", &image, &bundle_s];
        if rootless {
            args.insert(1, "--rootless");
        }
        let umoci = timed("umoci", &args)?;
        sync();
        let raw_s = raw.display().to_string();
        let mut args = vec!["raw", "unpack", "--image", &image, &raw_s];
        if rootless {
            args.insert(2, "--rootless");
        }
        let umoci_raw = timed("umoci", &args)?;
        for d in [&oci, &bundle, &raw] {
            remove(d);
        }
        Ok(PeerRun {
            skopeo,
            umoci,
            umoci_raw,
        })
    };

    say("warm-up: one run of each");
    shoal_once(0)?;
    peer_once(0)?;
    let mut shoal = Vec::new();
    let mut shoal_unpack = Vec::new();
    let mut peer = Vec::new();
    for i in 1..=runs {
        // Alternate which side goes first.
        let order = if i % 2 == 1 {
            [true, false]
        } else {
            [false, true]
        };
        for is_shoal in order {
            if is_shoal {
                let (r, u) = shoal_once(i)?;
                say(&format!(
                    "run {i}: shoal {:.2} s (manifest {:.2}, downloaded {:.2}, unpacked {:.2}); unpack alone {u:.2} s",
                    r.total, r.resolved, r.downloaded, r.unpacked
                ));
                shoal.push(r);
                shoal_unpack.push(u);
            } else {
                let p = peer_once(i)?;
                say(&format!(
                    "run {i}: skopeo {:.2} s + umoci unpack {:.2} s (umoci raw unpack {:.2} s)",
                    p.skopeo, p.umoci, p.umoci_raw
                ));
                peer.push(p);
            }
        }
    }

    let col = |f: fn(&ShoalRun) -> f64| shoal.iter().map(f).collect::<Vec<f64>>();
    let pcol = |f: fn(&PeerRun) -> f64| peer.iter().map(f).collect::<Vec<f64>>();
    let s_total = col(|r| r.total);
    let p_total = pcol(|p| p.skopeo + p.umoci);
    let p_raw_total = pcol(|p| p.skopeo + p.umoci_raw);
    let (s_med, p_med) = (median(&s_total), median(&p_total));
    let ratio = s_med / p_med;
    let sizes: Vec<String> = image
        .layers
        .iter()
        .map(|l| format!("{:.1}", l.blob.size as f64 / MIB as f64))
        .collect();
    println!(
        "### Pull + unpack, loopback registry: {:.1} MiB image, {n_layers} gzip layers of {what}, {runs} runs each, interleaved",
        image_bytes as f64 / MIB as f64
    );
    println!();
    println!(
        "Layers (MiB): {}. Registry: Debian docker-registry on 127.0.0.1, plain HTTP. shoal: \
         `Puller::pull` into a fresh store (4 blobs at once, each layer unpacked as it arrives, \
         into its own dir). Peer: `skopeo copy docker://… oci:DIR:bench` then \
         `umoci unpack --image DIR:bench BUNDLE`. `sync` before every timed step; the first run \
         of each side is a warm-up, not counted.",
        sizes.join(", ")
    );
    println!();
    println!("| measure | n | median s | min s | max s | runs (s) |");
    println!("|---|---|---|---|---|---|");
    println!("{}", row("**shoal pull + unpack**", &s_total));
    println!("{}", row("… manifest resolved", &col(|r| r.resolved)));
    println!("{}", row("… all blobs downloaded", &col(|r| r.downloaded)));
    println!("{}", row("… all layers unpacked", &col(|r| r.unpacked)));
    println!(
        "{}",
        row(
            "shoal unpack alone (blobs local, layers one by one)",
            &shoal_unpack
        )
    );
    println!("{}", row("**skopeo copy + umoci unpack**", &p_total));
    println!("{}", row("skopeo copy alone", &pcol(|p| p.skopeo)));
    println!("{}", row("umoci unpack alone", &pcol(|p| p.umoci)));
    println!(
        "{}",
        row(
            "(umoci raw unpack: rootfs only, no mtree/config)",
            &pcol(|p| p.umoci_raw)
        )
    );
    println!("{}", row("(skopeo copy + umoci raw unpack)", &p_raw_total));
    println!();
    println!(
        "shoal / (skopeo + umoci): **{ratio:.2}×** at the median (goal ≤ 1.0×); shoal / (skopeo + umoci raw unpack): {:.2}×",
        s_med / median(&p_raw_total)
    );
    println!();
    println!(
        "RESULT pull_unpack content={} image_mib={:.1} layers={n_layers} runs={runs} shoal_median_s={s_med:.2} skopeo_umoci_median_s={p_med:.2} skopeo_median_s={:.2} umoci_median_s={:.2} ratio={ratio:.2} goal_ratio=1.0 met={}",
        if content == Content::Random { "random" } else { "files" },
        image_bytes as f64 / MIB as f64,
        median(&pcol(|p| p.skopeo)),
        median(&pcol(|p| p.umoci)),
        ratio <= 1.0
    );
    println!();
    Ok(())
}

/// One pull into a fresh store in `dir`, timed by its progress events.
async fn shoal_pull(dir: &Path, reference: &str, host: &str) -> Result<ShoalRun> {
    let t0 = Instant::now();
    let puller = Puller::new(
        ImageStore::open(dir)?,
        PullConfig {
            insecure_registries: vec![host.to_string()],
            ..PullConfig::default()
        },
        Arc::new(NoPeers),
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let events = tokio::spawn(async move {
        let mut r = ShoalRun::default();
        while let Some(e) = rx.recv().await {
            let t = t0.elapsed().as_secs_f64();
            match e {
                PullEvent::Resolved { .. } => r.resolved = t,
                // A blob is complete when all its bytes are in (the last event of each blob).
                PullEvent::Blob { done, total, .. } if done == total => r.downloaded = t,
                PullEvent::Unpacking => r.unpacked = t,
                _ => {}
            }
        }
        r
    });
    puller
        .pull(
            &PullRequest {
                reference: reference.to_string(),
                credentials: None,
            },
            Some(tx),
        )
        .await
        .with_context(|| format!("shoal pull {reference}"))?;
    let total = t0.elapsed().as_secs_f64();
    drop(puller);
    let mut r = events.await.context("the progress collector")?;
    r.total = total;
    Ok(r)
}

// ---- registry egress on the testnet ----------------------------------------------------------

/// What the registry served during one round, from its log.
#[derive(Default)]
struct Served {
    bytes: u64,
    /// GETs per blob digest.
    blob_gets: BTreeMap<String, usize>,
    manifest_gets: usize,
    /// Bytes per client address.
    by_client: BTreeMap<String, u64>,
    errors: usize,
}

/// One round: replicas, image size, registry bytes, times.
struct Round {
    replicas: usize,
    image_bytes: u64,
    blobs: Vec<String>,
    served: Served,
    first_running: f64,
    all_running: f64,
    bridge_tx: u64,
    nodes: Vec<String>,
}

/// An image with a busybox layer (unique by a nonce file) and `n - 1` random layers.
fn egress_image(dir: &Path, size_mib: usize, n: usize, nonce: u64) -> Result<(u64, Vec<String>)> {
    let busybox =
        std::fs::read("/bin/busybox").context("/bin/busybox (Debian package busybox-static)")?;
    let bb = vec![
        Entry::dir("bin"),
        Entry::file("bin/busybox", &busybox).mode(0o755),
        Entry::symlink("bin/sh", "busybox"),
        Entry::symlink("bin/sleep", "busybox"),
        Entry::dir("etc"),
        Entry::file("etc/bench-nonce", format!("{nonce}\n").as_bytes()),
    ];
    let mut layers = vec![LayerSpec::new(bb)];
    let rest = (size_mib * MIB).saturating_sub(busybox.len());
    layers.extend(layout::random_layers(
        rest,
        n.saturating_sub(1).max(1),
        nonce,
    ));
    let mut oci = OciLayout::create(dir);
    let image = oci.add_image(&layers, &ConfigSpec::default());
    oci.tag("bench", &image.manifest);
    let bytes = image.manifest.size
        + image.config.size
        + image.layers.iter().map(|l| l.blob.size).sum::<u64>();
    let mut blobs = vec![image.manifest.digest.clone()];
    blobs.extend(image.blob_digests());
    Ok((bytes, blobs))
}

struct Testnet {
    dir: PathBuf,
    kubeconfig: String,
}

impl Testnet {
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let mut cmd = Command::new("kubectl");
        cmd.args(["--kubeconfig", &self.kubeconfig, "--request-timeout=10s"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = cmd.spawn().context("run kubectl")?;
        if let Some(s) = stdin {
            child
                .stdin
                .take()
                .context("kubectl stdin")?
                .write_all(s.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn registry_log(&self) -> PathBuf {
        self.dir.join("run/registry/registry.log")
    }
}

fn bridge_tx() -> u64 {
    std::fs::read_to_string("/sys/class/net/shoal-br0/statistics/tx_bytes")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Sends a marker request to the testnet registry and waits until its log shows it, so that
/// every request answered before is in the log too (`parse_served` skips `/v2/?…`).
fn sync_registry_log(log: &Path, offset: u64) -> Result<()> {
    let marker = format!("/v2/?sync={}", rand::random::<u64>());
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "5"])
        .arg(format!("http://10.77.0.1:5000{marker}"))
        .status()
        .context("run curl")?;
    if !out.success() {
        bail!("the registry did not answer the log marker request");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log_since(log, offset)?.contains(&marker) {
        if Instant::now() > deadline {
            bail!("marker {marker} not in the registry log after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The registry log from byte `offset` on.
fn log_since(path: &Path, offset: u64) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    f.seek(SeekFrom::Start(offset))?;
    let mut s = String::new();
    f.read_to_string(&mut s)?;
    Ok(s)
}

/// Sums the GET responses in `log` (JSON lines of docker-registry 2.8: `response completed`
/// with `http.request.method`, `http.request.uri`, `http.response.written`,
/// `http.request.remoteaddr`).
fn parse_served(log: &str) -> Served {
    let mut s = Served::default();
    for line in log.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let msg = v["msg"].as_str().unwrap_or("");
        if !msg.starts_with("response completed") {
            continue;
        }
        if v["http.request.method"].as_str() != Some("GET") {
            continue;
        }
        let uri = v["http.request.uri"].as_str().unwrap_or("");
        if !uri.starts_with("/v2/") || uri == "/v2/" || uri.starts_with("/v2/?") {
            continue;
        }
        let written = v["http.response.written"].as_u64().unwrap_or(0);
        if msg != "response completed" {
            s.errors += 1;
        }
        s.bytes += written;
        let client = v["http.request.remoteaddr"]
            .as_str()
            .unwrap_or("?")
            .rsplit_once(':')
            .map(|(ip, _)| ip.to_string())
            .unwrap_or_default();
        *s.by_client.entry(client).or_default() += written;
        if let Some((_, d)) = uri.split_once("/blobs/") {
            *s.blob_gets.entry(d.to_string()).or_default() += 1;
        } else if uri.contains("/manifests/") {
            s.manifest_gets += 1;
        }
    }
    s
}

fn deployment(name: &str, image: &str, replicas: usize) -> String {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"bench": "images"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, "bench": "images"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
                        "labelSelector": {"matchLabels": {"app": name}},
                        "topologyKey": "kubernetes.io/hostname",
                    }]}},
                    "containers": [{
                        "name": "main",
                        "image": image,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["/bin/sleep", "3600"],
                    }],
                },
            },
        },
    })
    .to_string()
}

/// (running, total, nodes of the running pods, reasons of waiting containers).
fn pod_state(tn: &Testnet, name: &str) -> Result<(usize, usize, Vec<String>, Vec<String>)> {
    let out = tn.kubectl(
        &["get", "pods", "-l", &format!("app={name}"), "-o", "json"],
        None,
    )?;
    let v: Value = serde_json::from_str(&out).context("kubectl get pods -o json")?;
    let items = v["items"].as_array().cloned().unwrap_or_default();
    let mut running = 0;
    let mut nodes = Vec::new();
    let mut waiting = Vec::new();
    for p in &items {
        if p["status"]["phase"] == "Running" {
            running += 1;
            nodes.push(p["spec"]["nodeName"].as_str().unwrap_or("?").to_string());
        }
        for c in p["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(r) = c["state"]["waiting"]["reason"].as_str() {
                waiting.push(r.to_string());
            }
        }
    }
    nodes.sort();
    Ok((running, items.len(), nodes, waiting))
}

fn egress_round(
    tn: &Testnet,
    work: &Path,
    replicas: usize,
    size_mib: usize,
    layers: usize,
    timeout: Duration,
) -> Result<Round> {
    let nonce = rand::thread_rng().next_u64() & 0xffff_ffff;
    let name = format!("egress-{nonce:08x}");
    let dir = work.join(&name);
    remove(&dir);
    let (image_bytes, blobs) = egress_image(&dir, size_mib, layers, nonce)?;
    let repo = format!("bench/{name}:1");
    run(
        &tn.dir.join("registry.sh").display().to_string(),
        &["push", &dir.display().to_string(), &repo, "bench"],
    )?;
    remove(&dir);
    let image = format!("10.77.0.1:5000/{repo}");
    let log = tn.registry_log();
    let offset = std::fs::metadata(&log)
        .with_context(|| format!("{} (is the testnet registry up?)", log.display()))?
        .len();
    sync();
    say(&format!(
        "{name}: {replicas} replica(s) of {image} ({:.1} MiB)",
        image_bytes as f64 / MIB as f64
    ));
    let tx0 = bridge_tx();
    let t0 = Instant::now();
    tn.kubectl(
        &["apply", "-f", "-"],
        Some(&deployment(&name, &image, replicas)),
    )?;
    let mut first_running = None;
    let (all_running, nodes) = loop {
        let (running, _total, nodes, waiting) = pod_state(tn, &name)?;
        let t = t0.elapsed().as_secs_f64();
        if running > 0 && first_running.is_none() {
            first_running = Some(t);
        }
        if running == replicas {
            break (t, nodes);
        }
        if t0.elapsed() > timeout {
            let _ = tn.kubectl(&["delete", "deployment", &name, "--wait=false"], None);
            bail!(
                "{name}: {running} of {replicas} Running after {timeout:?} (waiting: {waiting:?})"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let bridge = bridge_tx().saturating_sub(tx0);
    // Each request is logged when it completes: a marker request logged after them all.
    sync_registry_log(&log, offset)?;
    let served = parse_served(&log_since(&log, offset)?);
    tn.kubectl(&["delete", "deployment", &name, "--wait=false"], None)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && pod_state(tn, &name).map(|s| s.1).unwrap_or(0) > 0 {
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(Round {
        replicas,
        image_bytes,
        blobs,
        served,
        first_running: first_running.unwrap_or(all_running),
        all_running,
        bridge_tx: bridge,
        nodes,
    })
}

#[allow(clippy::too_many_arguments)]
fn egress_bench(
    work: &Path,
    testnet: &Path,
    nodes: usize,
    rounds: usize,
    size_mib: usize,
    layers: usize,
    timeout: Duration,
) -> Result<()> {
    let dir = std::fs::canonicalize(testnet)
        .with_context(|| format!("the testnet dir {}", testnet.display()))?;
    let kubeconfig = dir.join("run/kubeconfig");
    if !kubeconfig.exists() {
        bail!("{} is missing: is the testnet up?", kubeconfig.display());
    }
    let tn = Testnet {
        kubeconfig: kubeconfig.display().to_string(),
        dir,
    };
    let mut results: Vec<Round> = Vec::new();
    for r in 0..rounds {
        // Alternate which size goes first.
        let order = if r % 2 == 0 { [nodes, 1] } else { [1, nodes] };
        for replicas in order {
            let round = egress_round(&tn, work, replicas, size_mib, layers, timeout)?;
            say(&format!(
                "{} replica(s): registry sent {:.1} MiB for a {:.1} MiB image ({:.2}×), all Running in {:.1} s",
                replicas,
                round.served.bytes as f64 / MIB as f64,
                round.image_bytes as f64 / MIB as f64,
                round.served.bytes as f64 / round.image_bytes as f64,
                round.all_running
            ));
            results.push(round);
        }
    }

    println!(
        "### Registry egress, netns testnet: {nodes} nodes start the same new image at once ({size_mib} MiB, {layers} layers), {rounds} rounds, beside 1 replica"
    );
    println!();
    println!(
        "Each round a fresh image (busybox + random layers, new digests) is pushed to \
         10.77.0.1:5000, then a Deployment (required pod anti-affinity on \
         `kubernetes.io/hostname`, `sleep 3600`) is applied with kubectl and its pods polled \
         every 200 ms until all are Running. Bytes are the sum of `http.response.written` of the \
         registry's GET responses (its log) between the apply and all Running; bridge tx is \
         every byte the host sent into `shoal-br0` then (registry, kubectl, TCP/IP overhead)."
    );
    println!();
    println!("| replicas | image MiB | registry sent MiB | **sent / image** | GETs per blob | manifest GETs | bridge tx MiB | first Running s | **all Running s** | nodes | sent per client (MiB) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &results {
        let gets: Vec<String> = r
            .blobs
            .iter()
            .skip(1)
            .map(|d| r.served.blob_gets.get(d).copied().unwrap_or(0).to_string())
            .collect();
        let clients: Vec<String> = r
            .served
            .by_client
            .iter()
            .map(|(c, b)| format!("{c}: {:.1}", *b as f64 / MIB as f64))
            .collect();
        println!(
            "| {} | {:.1} | {:.1} | **{:.2}×** | {} | {} | {:.1} | {:.1} | **{:.1}** | {} | {} |",
            r.replicas,
            r.image_bytes as f64 / MIB as f64,
            r.served.bytes as f64 / MIB as f64,
            r.served.bytes as f64 / r.image_bytes as f64,
            gets.join(" "),
            r.served.manifest_gets,
            r.bridge_tx as f64 / MIB as f64,
            r.first_running,
            r.all_running,
            r.nodes.join(" "),
            clients.join(", "),
        );
        if r.served.errors > 0 {
            println!(
                "|  | ({} GET answered with an error) |||||||||",
                r.served.errors
            );
        }
    }
    println!();
    let ratios = |n: usize| -> Vec<f64> {
        results
            .iter()
            .filter(|r| r.replicas == n)
            .map(|r| r.served.bytes as f64 / r.image_bytes as f64)
            .collect()
    };
    let times = |n: usize| -> Vec<f64> {
        results
            .iter()
            .filter(|r| r.replicas == n)
            .map(|r| r.all_running)
            .collect()
    };
    let (rn, r1) = (ratios(nodes), ratios(1));
    let worst = rn.iter().copied().fold(0.0, f64::max);
    println!(
        "GETs per blob: config first, then the layers. {nodes} replicas: sent / image median **{:.2}×** (max {worst:.2}×, goal ≤ 1.2×), apply → all Running median **{:.1} s**; 1 replica: {:.2}×, {:.1} s.",
        median(&rn),
        median(&times(nodes)),
        median(&r1),
        median(&times(1)),
    );
    println!();
    println!(
        "RESULT egress testnet nodes={nodes} rounds={rounds} image_mib={size_mib} ratio_median={:.2} ratio_max={worst:.2} all_running_median_s={:.1} one_replica_ratio={:.2} one_replica_s={:.1} goal_ratio=1.2 met={}",
        median(&rn),
        median(&times(nodes)),
        median(&r1),
        median(&times(1)),
        worst <= 1.2
    );
    println!();
    Ok(())
}
