//! The pod network attached in-process over rtnetlink, doing what the `bridge` + `host-local`
//! CNI plugins did for shoal's network (see `docs/networking.md`, "Pod network"), without
//! starting two Go processes per pod: a veth pair whose pod end is created directly in the
//! sandbox's namespace as `eth0`, whose node end joins bridge `shoal0` (hairpin on, up); the
//! pod's address from this node's leases (`runtime::leases`, host-local's files); inside the
//! pod, the address, `eth0` up and the default route via the gateway.
//!
//! Messages are built with the `rtnetlink` crate's builders (its `netlink-packet-route` types)
//! and sent over a plain blocking `netlink-sys` socket: the runtime is blocking code, and a
//! socket opened inside a pod's namespace (on a short-lived thread that `setns`es) stays bound
//! to it. The result recorded in `network.json` has the CNI 1.0.0 shape ([`cni_result`]).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;

use ipnet::Ipv4Net;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkFlags, LinkMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use rtnetlink::{
    AddressMessageBuilder, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};
use serde_json::{json, Value};

use super::{leases, RuntimeError};
use crate::model::network::{self, BRIDGE, CNI_NETWORK, POD_IFNAME};
use crate::model::observed::{PodAddress, PodNetwork};

/// Most bytes of one netlink reply read at once.
const RECV_BUFFER: usize = 64 << 10;

fn net_err(what: &str) -> impl FnOnce(io::Error) -> RuntimeError + '_ {
    move |e| RuntimeError::Network(format!("{what}: {e}"))
}

/// The node end's name: `veth` and 8 hex digits, random (as the `bridge` plugin names it).
pub fn host_veth_name(random: u32) -> String {
    format!("veth{random:08x}")
}

/// The CNI 1.0.0 result of an attachment (what the `bridge` plugin printed), kept in
/// `network.json` so its shape does not depend on who attached the pod.
pub fn cni_result(host_veth: &str, netns: &Path, address: &PodAddress) -> Value {
    json!({
        "cniVersion": super::network::CNI_VERSION,
        "interfaces": [
            {"name": BRIDGE},
            {"name": host_veth},
            {"name": POD_IFNAME, "sandbox": netns.to_string_lossy()},
        ],
        "ips": [{
            "interface": 2,
            "address": format!("{}/{}", address.ip, address.prefix),
            "gateway": address.gateway.to_string(),
        }],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {},
    })
}

/// A blocking rtnetlink socket in the network namespace it was opened in.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink { socket, seq: 0 })
    }

    /// A socket in the network namespace at `netns` (`/proc/<pid>/ns/net`): opened on a
    /// short-lived thread that joins the namespace, so no thread of the agent ever moves.
    pub fn open_in(netns: &Path) -> io::Result<Self> {
        let ns = std::fs::File::open(netns)?;
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from)?;
                Netlink::open()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
        })
    }

    /// Sends one request and collects its replies until the kernel's ACK (or error).
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut msg = NetlinkMessage::from(message);
        msg.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        msg.header.sequence_number = self.seq;
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut replies = Vec::new();
        loop {
            let mut buf = Vec::with_capacity(RECV_BUFFER);
            let n = self.socket.recv(&mut buf, 0)?;
            let mut off = 0;
            while off + 16 <= n {
                let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]])
                    as usize;
                if len < 16 || off + len > n {
                    return Err(io::Error::other("a truncated netlink reply"));
                }
                let reply =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..off + len])
                        .map_err(|e| io::Error::other(format!("a netlink reply: {e}")))?;
                off += (len + 3) & !3;
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(replies),
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(m) => replies.push(m),
                    _ => {}
                }
            }
        }
    }

    /// The link named `name`, if any.
    pub fn link(&mut self, name: &str) -> io::Result<Option<LinkMessage>> {
        let get = LinkUnspec::new_with_name(name).build();
        match self.request(RouteNetlinkMessage::GetLink(get), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(nix::libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn new_link(&mut self, link: LinkMessage, flags: u16) -> io::Result<()> {
        self.request(RouteNetlinkMessage::NewLink(link), flags)
            .map(|_| ())
    }

    /// Adds an address; one that is there already is fine.
    fn add_address(&mut self, index: u32, address: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let msg = AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(address, prefix)
            .build();
        match self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.raw_os_error() == Some(nix::libc::EEXIST) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// The IPv4 addresses of link `index`.
    fn addresses(&mut self, index: u32) -> io::Result<Vec<(Ipv4Addr, u8)>> {
        let mut get = AddressMessage::default();
        get.header.family = rtnetlink::packet_route::AddressFamily::Inet;
        let replies = self.request(
            RouteNetlinkMessage::GetAddress(get),
            rtnetlink::packet_core::NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    a.attributes.iter().find_map(|at| match at {
                        AddressAttribute::Local(std::net::IpAddr::V4(ip)) => {
                            Some((*ip, a.header.prefix_len))
                        }
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }
}

fn is_up(link: &LinkMessage) -> bool {
    link.header.flags.contains(LinkFlags::Up)
}

/// This node's bridge, created and brought up if needed (the routes task does the same), with
/// the gateway of `cidr` on it; returns its index.
fn ensure_bridge(nl: &mut Netlink, cidr: Ipv4Net, gateway: Ipv4Addr) -> io::Result<u32> {
    let bridge = match nl.link(BRIDGE)? {
        Some(b) => b,
        None => {
            match nl.new_link(
                LinkBridge::new(BRIDGE).up().build(),
                NLM_F_CREATE | NLM_F_EXCL,
            ) {
                Err(e) if e.raw_os_error() != Some(nix::libc::EEXIST) => return Err(e),
                _ => {}
            }
            nl.link(BRIDGE)?
                .ok_or_else(|| io::Error::other(format!("bridge {BRIDGE} vanished")))?
        }
    };
    let index = bridge.header.index;
    if !is_up(&bridge) {
        nl.new_link(LinkUnspec::new_with_index(index).up().build(), 0)?;
    }
    nl.add_address(index, gateway, cidr.prefix_len())?;
    Ok(index)
}

/// Attaches the namespace at `netns` for pod `key`: an address from `ipam_dir`'s leases
/// (`<ipam_dir>/shoal`), a veth on the bridge, the pod's `eth0` configured. On an error the
/// caller undoes with [`del`].
pub fn add(
    ipam_dir: &Path,
    key: &str,
    netns: &Path,
    cidr: Ipv4Net,
) -> Result<(PodAddress, Value), RuntimeError> {
    let gateway = network::gateway(&cidr.to_string()).ok_or_else(|| RuntimeError::Invalid {
        what: "pod CIDR".into(),
        reason: format!("{cidr} has no room for a gateway and pods"),
    })?;
    let ns = std::fs::File::open(netns).map_err(net_err("opening the pod's network namespace"))?;
    let ip = leases::reserve(&ipam_dir.join(CNI_NETWORK), cidr, gateway, key)?;
    let address = PodAddress {
        ip,
        prefix: cidr.prefix_len(),
        gateway,
    };
    let mut node = Netlink::open().map_err(net_err("netlink"))?;
    let bridge = ensure_bridge(&mut node, cidr, gateway).map_err(net_err("bridge"))?;
    let mut pod = Netlink::open_in(netns).map_err(net_err("netlink in the pod"))?;
    // A retried attach may find the pod's end from before.
    if pod.link(POD_IFNAME).map_err(net_err("pod link"))?.is_some() {
        del_pod_link(&mut pod)?;
    }
    let mut host = String::new();
    for attempt in 0..4 {
        host = host_veth_name(rand::random());
        let peer = LinkUnspec::new_with_name(POD_IFNAME)
            .setns_by_fd(ns.as_raw_fd())
            .build();
        let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host.clone())
            .controller(bridge)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        match node.new_link(veth, NLM_F_CREATE | NLM_F_EXCL) {
            Ok(()) => break,
            Err(e) if e.raw_os_error() == Some(nix::libc::EEXIST) && attempt < 3 => continue,
            Err(e) => return Err(net_err("creating the veth pair")(e)),
        }
    }
    let hairpin = LinkBridgePort::new(0)
        .name(host.clone())
        .hairpin(true)
        .build();
    node.new_link(hairpin, 0)
        .map_err(net_err("hairpin mode on the bridge port"))?;
    let eth0 = pod
        .link(POD_IFNAME)
        .map_err(net_err("pod link"))?
        .ok_or_else(|| RuntimeError::Network(format!("{POD_IFNAME} is missing in the pod")))?
        .header
        .index;
    pod.add_address(eth0, ip, cidr.prefix_len())
        .map_err(net_err("the pod's address"))?;
    pod.new_link(LinkUnspec::new_with_index(eth0).up().build(), 0)
        .map_err(net_err("bringing the pod's eth0 up"))?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway)
        .output_interface(eth0)
        .build();
    match pod.request(
        RouteNetlinkMessage::NewRoute(route),
        NLM_F_CREATE | NLM_F_EXCL,
    ) {
        Err(e) if e.raw_os_error() != Some(nix::libc::EEXIST) => {
            return Err(net_err("the pod's default route")(e))
        }
        _ => {}
    }
    let result = cni_result(&host, netns, &address);
    Ok((address, result))
}

fn del_pod_link(pod: &mut Netlink) -> Result<(), RuntimeError> {
    let del = LinkUnspec::new_with_name(POD_IFNAME).build();
    match pod.request(RouteNetlinkMessage::DelLink(del), 0) {
        Err(e) if e.raw_os_error() != Some(nix::libc::ENODEV) => {
            Err(net_err("removing the pod's eth0")(e))
        }
        _ => Ok(()),
    }
}

/// Detaches pod `key`: its `eth0` (and so the veth pair) when the namespace at `netns` is
/// still there, then every address it holds. Idempotent.
pub fn del(ipam_dir: &Path, key: &str, netns: Option<&Path>) -> Result<(), RuntimeError> {
    if let Some(netns) = netns {
        match Netlink::open_in(netns) {
            Ok(mut pod) => del_pod_link(&mut pod)?,
            // The sandbox exited meanwhile: its namespace took the veth with it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(net_err("netlink in the pod")(e)),
        }
    }
    leases::release_key(&ipam_dir.join(CNI_NETWORK), key)
}

/// Whether the attachment recorded in `net` is still in place: `eth0` up in the pod with the
/// recorded address, and the lease still the pod's.
pub fn check(ipam_dir: &Path, net: &PodNetwork, netns: &Path) -> Result<(), RuntimeError> {
    let address = net
        .address
        .ok_or_else(|| RuntimeError::Network("the attachment has no address".into()))?;
    let mut pod = Netlink::open_in(netns).map_err(net_err("netlink in the pod"))?;
    let eth0 = pod
        .link(POD_IFNAME)
        .map_err(net_err("pod link"))?
        .ok_or_else(|| RuntimeError::Network(format!("{POD_IFNAME} is missing in the pod")))?;
    if !is_up(&eth0) {
        return Err(RuntimeError::Network(format!("{POD_IFNAME} is down")));
    }
    let have = pod
        .addresses(eth0.header.index)
        .map_err(net_err("the pod's addresses"))?;
    if !have.contains(&(address.ip, address.prefix)) {
        return Err(RuntimeError::Network(format!(
            "{POD_IFNAME} lacks {}/{} (has {have:?})",
            address.ip, address.prefix
        )));
    }
    let dir = ipam_dir.join(CNI_NETWORK);
    let held = leases::list(&dir)
        .into_iter()
        .any(|(a, holder)| a == address.ip.to_string() && holder == net.container_id);
    if !held {
        return Err(RuntimeError::Network(format!(
            "no lease of {} for {}",
            address.ip, net.container_id
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_result_reads_back_as_the_pods_address() {
        let address = PodAddress {
            ip: Ipv4Addr::new(10, 244, 3, 9),
            prefix: 24,
            gateway: Ipv4Addr::new(10, 244, 3, 1),
        };
        let result = cni_result("veth0badf00d", Path::new("/proc/42/ns/net"), &address);
        let bytes = serde_json::to_vec(&result).unwrap();
        assert_eq!(super::super::network::parse_result(&bytes), Ok(address));
        assert_eq!(result["interfaces"][1]["name"], "veth0badf00d");
        assert_eq!(result["interfaces"][2]["sandbox"], "/proc/42/ns/net");
    }

    #[test]
    fn host_ends_are_named_like_the_bridge_plugins() {
        assert_eq!(host_veth_name(0xdead_beef), "vethdeadbeef");
        assert_eq!(host_veth_name(7), "veth00000007");
        assert!(host_veth_name(u32::MAX).len() <= 15, "IFNAMSIZ");
    }
}
