//! The pod addresses of this node, kept on disk exactly as CNI's `host-local` IPAM plugin keeps
//! them (so leases written by either are read, released and reconciled by the other): one file
//! per address in `<ipam dir>/<network>/`, named by the address and holding
//! `<container id>\r\n<ifname>`, `last_reserved_ip.0` with the last address handed out (the
//! next search starts after it: addresses are not reused at once), and every change made under
//! an exclusive `flock` of `<dir>/lock`. The choice of the next address ([`next_free`]) is pure;
//! [`reserve`], [`release_key`], [`list`] and [`release_lease`] are the thin file shell.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;

use super::{io_err, RuntimeError};
use crate::model::network::POD_IFNAME;

/// host-local's record of the last address it reserved in range set 0.
pub const LAST_RESERVED: &str = "last_reserved_ip.0";
/// host-local's lock file.
pub const LOCK: &str = "lock";
/// Most bytes read from one lease file.
const MAX_LEASE_FILE: u64 = 4096;

/// The address to hand out next in `cidr` (host-local's order): the first address after
/// `last` (or from the start of the range when `last` is outside it) that is neither the
/// network address, the broadcast address, the `gateway`, nor in `used`, wrapping around once.
/// `None` when every address is taken.
pub fn next_free(
    cidr: Ipv4Net,
    gateway: Ipv4Addr,
    used: &BTreeSet<Ipv4Addr>,
    last: Option<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let first = u32::from(cidr.network()).checked_add(1)?;
    let end = u32::from(cidr.broadcast()).checked_sub(1)?;
    if first > end {
        return None;
    }
    let size = end - first + 1;
    let start = match last.map(u32::from) {
        Some(l) if (first..=end).contains(&l) => l - first + 1,
        _ => 0,
    };
    (0..size)
        .map(|i| Ipv4Addr::from(first + (start + i) % size))
        .find(|a| *a != gateway && !used.contains(a))
}

/// The content of a lease file (host-local 1.x: container id, CRLF, interface name).
pub fn lease_text(key: &str) -> String {
    format!("{}\r\n{POD_IFNAME}", key.trim())
}

/// The container id a lease file names: its first line, trimmed (host-local 0.x wrote the id
/// alone).
pub fn lease_holder(text: &str) -> &str {
    text.lines().next().unwrap_or("").trim()
}

/// The lease files in `dir`: (address, the container id it names).
pub fn list(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if name.parse::<Ipv4Addr>().is_err() {
            continue;
        }
        let mut text = String::new();
        if let Ok(f) = std::fs::File::open(e.path()) {
            let _ = f.take(MAX_LEASE_FILE).read_to_string(&mut text);
        }
        out.push((name, lease_holder(&text).to_string()));
    }
    out
}

/// Holds `<dir>/lock` exclusively while `f` runs (host-local's own lock).
fn locked<T>(dir: &Path, f: impl FnOnce() -> Result<T, RuntimeError>) -> Result<T, RuntimeError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let lock_path = dir.join(LOCK);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| RuntimeError::Spawn(format!("flock {}: {e}", lock_path.display())))?;
    f()
}

/// Reserves an address of `cidr` for `key` and returns it; the address `key` already holds,
/// if any (a retried attach keeps its address).
pub fn reserve(
    dir: &Path,
    cidr: Ipv4Net,
    gateway: Ipv4Addr,
    key: &str,
) -> Result<Ipv4Addr, RuntimeError> {
    locked(dir, || {
        let mut used = BTreeSet::new();
        for (address, holder) in list(dir) {
            let Ok(a) = address.parse::<Ipv4Addr>() else {
                continue;
            };
            if holder == key.trim() && cidr.contains(&a) {
                return Ok(a);
            }
            used.insert(a);
        }
        let last_path = dir.join(LAST_RESERVED);
        let last = std::fs::read_to_string(&last_path)
            .ok()
            .and_then(|t| t.trim().parse::<Ipv4Addr>().ok());
        let address = next_free(cidr, gateway, &used, last).ok_or_else(|| {
            RuntimeError::Network(format!(
                "no IP addresses available in range set {cidr} ({} leases)",
                used.len()
            ))
        })?;
        let path = dir.join(address.to_string());
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        if let Err(e) = file.write_all(lease_text(key).as_bytes()) {
            let _ = std::fs::remove_file(&path);
            return Err(io_err(&path)(e));
        }
        std::fs::write(&last_path, address.to_string()).map_err(io_err(&last_path))?;
        Ok(address)
    })
}

/// Releases every address `key` holds (host-local's DEL). Fine when it holds none.
pub fn release_key(dir: &Path, key: &str) -> Result<(), RuntimeError> {
    if !dir.exists() {
        return Ok(());
    }
    locked(dir, || {
        for (address, holder) in list(dir) {
            if holder == key.trim() {
                let path = dir.join(&address);
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(io_err(&path)(e))
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    })
}

/// Removes one lease file under the lock, and only if it still names `key`: between a look
/// and now, the address may have been released and given to a new pod.
pub fn release_lease(dir: &Path, address: &str, key: &str) -> Result<(), RuntimeError> {
    locked(dir, || {
        let path = dir.join(address);
        let mut text = String::new();
        if let Ok(f) = std::fs::File::open(&path) {
            let _ = f.take(MAX_LEASE_FILE).read_to_string(&mut text);
        }
        if lease_holder(&text) != key {
            return Ok(());
        }
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&path)(e)),
            _ => Ok(()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    const GW: &str = "10.244.3.1";

    #[test]
    fn the_first_address_is_the_one_after_the_gateway() {
        let none = BTreeSet::new();
        assert_eq!(
            next_free(net("10.244.3.0/24"), ip(GW), &none, None),
            Some(ip("10.244.3.2"))
        );
    }

    #[test]
    fn the_search_starts_after_the_last_reserved_and_wraps() {
        let used: BTreeSet<_> = [ip("10.244.3.2")].into();
        assert_eq!(
            next_free(net("10.244.3.0/24"), ip(GW), &used, Some(ip("10.244.3.7"))),
            Some(ip("10.244.3.8")),
            "a released address is not reused at once"
        );
        assert_eq!(
            next_free(
                net("10.244.3.0/24"),
                ip(GW),
                &used,
                Some(ip("10.244.3.254"))
            ),
            Some(ip("10.244.3.3")),
            "wraps past the broadcast, the network, the gateway and a used address"
        );
        assert_eq!(
            next_free(net("10.244.3.0/24"), ip(GW), &used, Some(ip("10.9.9.9"))),
            Some(ip("10.244.3.3")),
            "a last address outside the range starts from the beginning"
        );
    }

    #[test]
    fn a_full_range_has_no_address() {
        let cidr = net("10.244.0.16/29");
        let used: BTreeSet<_> = (18..=22).map(|i| Ipv4Addr::new(10, 244, 0, i)).collect();
        assert_eq!(next_free(cidr, ip("10.244.0.17"), &used, None), None);
        assert_eq!(
            next_free(net("10.0.0.0/31"), ip("10.0.0.0"), &used, None),
            None
        );
        assert_eq!(
            next_free(net("10.0.0.0/32"), ip("10.0.0.0"), &used, None),
            None
        );
    }

    proptest! {
        /// Whatever is taken and wherever the last search ended, the address handed out is a
        /// host of the range, not the gateway, not taken; and there is one unless all are.
        #[test]
        fn handed_out_addresses_are_free_hosts(
            mask in 24u8..=30,
            taken in proptest::collection::btree_set(0u32..256, 0..260),
            last in proptest::option::of(0u32..300),
        ) {
            let cidr = Ipv4Net::new(Ipv4Addr::new(10, 1, 2, 0), mask).unwrap();
            let gw = Ipv4Addr::from(u32::from(cidr.network()) + 1);
            let used: BTreeSet<Ipv4Addr> = taken
                .iter()
                .map(|t| Ipv4Addr::from(u32::from(cidr.network()) + t))
                .collect();
            let last = last.map(|l| Ipv4Addr::from(u32::from(cidr.network()) + l));
            let free_hosts = cidr
                .hosts()
                .filter(|h| *h != gw && !used.contains(h))
                .count();
            match next_free(cidr, gw, &used, last) {
                Some(a) => {
                    prop_assert!(cidr.contains(&a));
                    prop_assert!(a != cidr.network() && a != cidr.broadcast() && a != gw);
                    prop_assert!(!used.contains(&a));
                }
                None => prop_assert_eq!(free_hosts, 0),
            }
        }
    }

    #[test]
    fn leases_are_host_locals_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("shoal");
        let cidr = net("10.244.3.0/24");
        let a = reserve(&d, cidr, ip(GW), "pod-a").unwrap();
        assert_eq!(a, ip("10.244.3.2"));
        assert_eq!(
            std::fs::read_to_string(d.join("10.244.3.2")).unwrap(),
            "pod-a\r\neth0"
        );
        assert_eq!(
            std::fs::read_to_string(d.join(LAST_RESERVED)).unwrap(),
            "10.244.3.2"
        );
        assert_eq!(reserve(&d, cidr, ip(GW), "pod-a").unwrap(), a, "idempotent");
        let b = reserve(&d, cidr, ip(GW), "pod-b").unwrap();
        assert_eq!(b, ip("10.244.3.3"));
        assert_eq!(
            list(&d).into_iter().collect::<BTreeSet<_>>(),
            [
                ("10.244.3.2".to_string(), "pod-a".to_string()),
                ("10.244.3.3".to_string(), "pod-b".to_string())
            ]
            .into()
        );
        release_key(&d, "pod-a").unwrap();
        assert!(!d.join("10.244.3.2").exists());
        release_key(&d, "pod-a").unwrap();
        // Not reused at once: the next pod gets .4.
        assert_eq!(
            reserve(&d, cidr, ip(GW), "pod-c").unwrap(),
            ip("10.244.3.4")
        );
        // A lease written by host-local 0.x (the id alone) is read and released too.
        std::fs::write(d.join("10.244.3.9"), "pod-old").unwrap();
        assert!(list(&d).contains(&("10.244.3.9".to_string(), "pod-old".to_string())));
        release_key(&d, "pod-old").unwrap();
        assert!(!d.join("10.244.3.9").exists());
        release_key(&dir.path().join("never"), "x").unwrap();
    }

    #[test]
    fn an_exhausted_range_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let cidr = net("10.244.0.16/30");
        assert_eq!(
            reserve(dir.path(), cidr, ip("10.244.0.17"), "a").unwrap(),
            ip("10.244.0.18")
        );
        let e = reserve(dir.path(), cidr, ip("10.244.0.17"), "b")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no IP addresses available"), "{e}");
    }

    #[test]
    fn a_lease_is_released_only_while_it_still_names_the_orphan() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("10.244.0.7"), "b-key\r\neth0").unwrap();
        release_lease(dir.path(), "10.244.0.7", "a-key").unwrap();
        assert!(dir.path().join("10.244.0.7").exists());
        release_lease(dir.path(), "10.244.0.7", "b-key").unwrap();
        assert!(!dir.path().join("10.244.0.7").exists());
        release_lease(dir.path(), "10.244.0.7", "b-key").unwrap();
    }
}
