//! `shoal image import FILE` and `shoal image ls`: the image store of the node the kubeconfig
//! context points at.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;

use super::{client, ClientArgs};
use crate::api::ImageSummary;

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
