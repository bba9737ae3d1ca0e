//! `/proc/self/mountinfo`, parsed in one place for every caller (volume unmounting, cgroup
//! hierarchies): each mount's point, with the kernel's octal escapes (`\040` for a space)
//! decoded, and its filesystem type.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// One line of mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fstype: String,
}

/// This process's mounts; none when mountinfo cannot be read.
pub fn read() -> Vec<Mount> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| parse(&text))
        .unwrap_or_default()
}

/// Parses mountinfo text (`proc(5)`): `id parent major:minor root mount-point options
/// [optional fields...] - fstype source super-options`. Malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mount_point = pre.split(' ').nth(4)?;
            let fstype = post.split(' ').next()?;
            Some(Mount {
                mount_point: unescape(mount_point),
                fstype: fstype.to_string(),
            })
        })
        .collect()
}

/// Decodes the kernel's `\ooo` escapes (space, tab, newline, backslash) into the raw bytes of
/// the path.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .map(|d| d.iter().fold(0u32, |n, b| n * 8 + u32::from(b - b'0')))
            .and_then(|n| u8::try_from(n).ok());
        match octal {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const SAMPLE: &str = "\
22 1 0:21 / /sys rw,nosuid shared:7 - sysfs sysfs rw
30 22 0:26 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw
41 29 0:35 / /var/lib/shoal/pods/a\\040b/vol rw - tmpfs tmpfs rw,size=1024k
42 29 0:36 / /end\\134 rw - tmpfs tmpfs rw
43 29 0:37 / /tab\\011x rw master:1 propagate_from:2 - ext4 /dev/sda1 rw
garbage
";

    #[test]
    fn mount_points_and_types() {
        let mounts = parse(SAMPLE);
        let points: Vec<&str> = mounts
            .iter()
            .map(|m| m.mount_point.to_str().unwrap())
            .collect();
        assert_eq!(
            points,
            [
                "/sys",
                "/sys/fs/cgroup",
                "/var/lib/shoal/pods/a b/vol",
                "/end\\",
                "/tab\tx"
            ]
        );
        let types: Vec<&str> = mounts.iter().map(|m| m.fstype.as_str()).collect();
        assert_eq!(types, ["sysfs", "cgroup2", "tmpfs", "tmpfs", "ext4"]);
    }

    #[test]
    fn escapes_at_the_end_and_invalid_ones() {
        assert_eq!(
            unescape("/a\\040"),
            PathBuf::from("/a "),
            "an escape that ends the field"
        );
        assert_eq!(unescape("/a\\09"), PathBuf::from("/a\\09"), "not octal");
        assert_eq!(unescape("/a\\"), PathBuf::from("/a\\"));
        assert_eq!(unescape("/plain"), PathBuf::from("/plain"));
    }

    #[test]
    fn this_process_has_a_root() {
        assert!(read().iter().any(|m| m.mount_point == Path::new("/")));
    }
}
