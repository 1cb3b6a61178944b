//! Hosts as Linux network namespaces for tests: one namespace per node,
//! each with one veth link to a bridge in this (the root) namespace, all
//! addressed from one /28 of the benchmarking range 198.18.0.0/24, made
//! with iproute2 (`ip`) and removed when the [`Network`] is dropped (also
//! when the test fails or panics). Links between two nodes are cut and
//! healed with blackhole routes in both namespaces ([`Network::cut`]), so
//! a partition needs nothing but iproute2.
//!
//! Names carry the test process's pid (`odo<pid>` for the bridge and the
//! namespaces' prefix, `o<pid><node>` for the root end of a veth), so
//! [`clean_stale`] can remove what a run that died left behind (its pid is
//! gone) and nothing else. Each network takes a /28 no other interface of
//! this namespace has an address in, so runs side by side do not meet.
//! Namespaces have no default route: nothing leaves the network.
//!
//! Root and `ip` are needed: [`unavailable`] says why a test must skip
//! ([`available_or_skip`]) or fall back to loopback addresses
//! ([`available_or_loopback`]).

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Set to make a missing `ip` or root a failure instead of a skip.
pub const REQUIRE_ENV: &str = "ODO_REQUIRE_NETNS";

/// What namespaces' names (and the bridge's) start with.
const PREFIX: &str = "odo";
/// The range every address comes from.
const RANGE: [u8; 3] = [198, 18, 0];
/// A network's share of [`RANGE`]: a /28 (14 addresses: the bridge and
/// up to 13 nodes).
const BLOCK: u8 = 16;
/// The abstract socket whose holder hands out blocks (one run at a time;
/// the kernel lets it go with its process, and leaves no file).
const LOCK: &str = "odo-netns-blocks";

/// Why namespace tests cannot run here (not root, no `ip`), or `None` when
/// they can.
pub fn unavailable() -> Option<String> {
    if !cfg!(target_os = "linux") {
        return Some("network namespaces are Linux only".into());
    }
    if !rustix::process::geteuid().is_root() {
        return Some(
            "not root: making network namespaces, veth links and a bridge needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)".into(),
        );
    }
    let ip = Command::new("ip")
        .args(["netns", "list"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match ip {
        Ok(s) if s.success() => None,
        Ok(s) => Some(format!(
            "`ip netns list` failed ({s}): no network namespaces here"
        )),
        Err(e) => Some(format!(
            "no `ip` ({e}): apt-get install -y iproute2 (it makes the namespaces)"
        )),
    }
}

/// Whether namespace tests run; if not, prints why `test` skips (or
/// panics when [`REQUIRE_ENV`] is set).
pub fn available_or_skip(test: &str) -> bool {
    let Some(why) = unavailable() else {
        return true;
    };
    crate::skip::unless_required(&format!("{test}: skipped: {why}"), REQUIRE_ENV)
}

/// Whether tests that can also run on loopback get namespaces: `true`
/// when they can be made; otherwise prints that `test` runs on loopback
/// instead and why (or panics when [`REQUIRE_ENV`] is set: CI runs as
/// root and must not fall back silently).
pub fn available_or_loopback(test: &str) -> bool {
    let Some(why) = unavailable() else {
        return true;
    };
    crate::skip::unless_required(
        &format!("{test}: no network namespaces ({why}): on loopback addresses instead"),
        REQUIRE_ENV,
    )
}

/// Runs `ip args...`, failing with its stderr.
fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The pid in one of our names (`odo<pid>`, the bridge, or
/// `odo<pid>-<node>`, a namespace), and what follows it.
fn owner_pid(name: &str) -> Option<(u32, &str)> {
    let rest = name.strip_prefix(PREFIX)?;
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    let tail = &rest[digits..];
    if digits == 0 || !(tail.is_empty() || tail.starts_with('-')) {
        return None;
    }
    Some((rest[..digits].parse().ok()?, tail))
}

/// Holds [`LOCK`] (waiting up to 30 s for another run to let it go).
fn lock_blocks() -> Result<std::os::unix::net::UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(LOCK)?;
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match std::os::unix::net::UnixListener::bind_addr(&addr) {
            Ok(held) => return Ok(held),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if std::time::Instant::now() > give_up {
                    bail!("another run held the address blocks' lock for 30 s");
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(e).context("locking the address blocks"),
        }
    }
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes the namespaces, bridges and veth links that runs whose process
/// is gone left behind. Returns what it removed.
pub fn clean_stale() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for line in ip(&["netns", "list"])?.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if let Some((pid, tail)) = owner_pid(name)
            && !tail.is_empty()
            && !alive(pid)
        {
            ip(&["netns", "del", name])?;
            removed.push(name.to_owned());
        }
    }
    // The bridges (a veth goes with its namespace).
    for line in ip(&["-o", "link", "show", "type", "bridge"])?.lines() {
        // `3: name: <...> ...`
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        if let Some((pid, "")) = owner_pid(name)
            && !alive(pid)
        {
            ip(&["link", "del", name])?;
            removed.push(name.to_owned());
        }
    }
    Ok(removed)
}

/// One node: a namespace with one address.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its label (`h0`, `e1`, ...).
    pub label: String,
    /// The namespace's name (for `ip netns exec`).
    pub ns: String,
    /// Its address.
    pub ip: Ipv4Addr,
}

/// A bridge and namespaces on it; removed when dropped.
#[derive(Debug)]
pub struct Network {
    bridge: String,
    gateway: Ipv4Addr,
    nodes: Vec<Node>,
    // (from, to): blackhole routes in place.
    cuts: Vec<(usize, usize)>,
}

impl Network {
    /// Makes the bridge (its address: [`gateway`](Self::gateway)) and one
    /// namespace per label (labels: a lowercase letter and a digit or two),
    /// after cleaning what dead runs left.
    pub fn create(labels: &[&str]) -> Result<Self> {
        if labels.len() > usize::from(BLOCK) - 3 {
            bail!("{} nodes: a network holds at most 13", labels.len());
        }
        for label in labels {
            let ok = label.len() <= 3
                && label.starts_with(|c: char| c.is_ascii_lowercase())
                && label[1..].chars().all(|c| c.is_ascii_digit());
            if !ok {
                bail!("node label {label:?}: a lowercase letter and up to 2 digits");
            }
        }
        let stale = clean_stale()?;
        if !stale.is_empty() {
            eprintln!("netns: removed what dead runs left: {stale:?}");
        }
        let pid = std::process::id();
        let bridge = format!("{PREFIX}{pid}");
        // One block per run, chosen under a lock so two runs do not pick
        // the same one.
        let lock = lock_blocks()?;
        let taken = ip(&["-4", "-o", "addr", "show"])?;
        let block = (0..256 / u16::from(BLOCK))
            .map(|b| b as u8 * BLOCK)
            .find(|base| {
                let prefix = format!("{}.{}.{}.", RANGE[0], RANGE[1], RANGE[2]);
                !taken.split_whitespace().any(|word| {
                    word.strip_prefix(&prefix)
                        .and_then(|rest| rest.split('/').next()?.parse::<u8>().ok())
                        .is_some_and(|last| last / BLOCK * BLOCK == *base)
                })
            })
            .context("every /28 of 198.18.0.0/24 is in use on this machine")?;
        let at = |n: u8| Ipv4Addr::new(RANGE[0], RANGE[1], RANGE[2], block + n);
        let mut network = Self {
            bridge: bridge.clone(),
            gateway: at(1),
            nodes: Vec::new(),
            cuts: Vec::new(),
        };
        // From here on, dropping `network` removes what exists.
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        let cidr = format!("{}/28", network.gateway);
        ip(&["addr", "add", &cidr, "dev", &bridge])?;
        drop(lock);
        ip(&["link", "set", &bridge, "up"])?;
        for (i, label) in labels.iter().enumerate() {
            let node = Node {
                label: (*label).to_owned(),
                ns: format!("{bridge}-{label}"),
                ip: at(2 + i as u8),
            };
            ip(&["netns", "add", &node.ns])?;
            network.nodes.push(node.clone());
            let veth = format!("o{pid}{label}");
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &node.ns,
            ])?;
            ip(&["link", "set", &veth, "master", &bridge, "up"])?;
            let cidr = format!("{}/28", node.ip);
            ip(&["-n", &node.ns, "addr", "add", &cidr, "dev", "eth0"])?;
            ip(&["-n", &node.ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &node.ns, "link", "set", "lo", "up"])?;
        }
        Ok(network)
    }

    /// The bridge's address (this namespace's, reachable from every node).
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// The node labelled `label`.
    pub fn node(&self, label: &str) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.label == label)
            .with_context(|| format!("no node {label}"))
    }

    fn index(&self, label: &str) -> Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.label == label)
            .with_context(|| format!("no node {label}"))
    }

    /// Cuts `a` off from each of `others`, both ways (a blackhole route in
    /// each namespace to the other's address). The gateway and the nodes
    /// not named still reach `a`.
    pub fn cut(&mut self, a: &str, others: &[&str]) -> Result<()> {
        let a = self.index(a)?;
        for b in others {
            let b = self.index(b)?;
            for (from, to) in [(a, b), (b, a)] {
                if self.cuts.contains(&(from, to)) {
                    continue;
                }
                let dst = format!("{}/32", self.nodes[to].ip);
                ip(&[
                    "-n",
                    &self.nodes[from].ns,
                    "route",
                    "add",
                    "blackhole",
                    &dst,
                ])?;
                self.cuts.push((from, to));
            }
        }
        Ok(())
    }

    /// Removes every cut.
    pub fn heal(&mut self) -> Result<()> {
        while let Some((from, to)) = self.cuts.pop() {
            let dst = format!("{}/32", self.nodes[to].ip);
            ip(&[
                "-n",
                &self.nodes[from].ns,
                "route",
                "del",
                "blackhole",
                &dst,
            ])?;
        }
        Ok(())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // A namespace goes once its last process has; its veth with it.
        for node in &self.nodes {
            if let Err(e) = ip(&["netns", "del", &node.ns]) {
                eprintln!("netns: {e:#}");
            }
        }
        if let Err(e) = ip(&["link", "del", &self.bridge]) {
            eprintln!("netns: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn only_our_names_have_an_owner() {
        assert_eq!(owner_pid("odo123"), Some((123, "")));
        assert_eq!(owner_pid("odo123-h0"), Some((123, "-h0")));
        assert_eq!(owner_pid("o123h0"), None);
        assert_eq!(owner_pid("eth0"), None);
        assert_eq!(owner_pid("odo"), None);
        assert_eq!(owner_pid("odo12x"), None);
        assert_eq!(owner_pid("docker0"), None);
    }
}
