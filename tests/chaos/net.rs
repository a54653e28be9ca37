//! Network faults between nodes, made with nftables on loopback: each node serves and
//! dials from an address of its own (`127.0.0.11`, ...), so a rule on source and
//! destination address cuts one link and nothing else. Clients dial from `127.0.0.1`
//! and keep reaching every node, as Jepsen's clients do.
//!
//! The rules live in one table named after this process, filtering on the input hook
//! (a drop on output would fail the sender's `sendmsg` instead of losing the packet).
//! The table is deleted when the [`Net`] is dropped, a failing test's unwinding included.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

/// The nftables table of this process, while it exists.
#[derive(Debug)]
pub struct Net {
    table: String,
}

impl Net {
    /// Creates this process's table, failing the test with what is missing when nftables
    /// cannot be used (not installed, or no permission to change the ruleset).
    pub fn new() -> Net {
        let table = format!("casty_chaos_{}", std::process::id());
        let net = Net { table };
        net.run(&format!(
            "add table inet {t}\nadd chain inet {t} input {{ type filter hook input priority 0; policy accept; }}\nflush chain inet {t} input\n",
            t = net.table
        ));
        net
    }

    /// Drops every packet from `from` to `to` (one direction).
    pub fn cut_one_way(&self, from: IpAddr, to: IpAddr) {
        self.add_rule(from, to, "drop");
    }

    /// Drops every packet between `a` and `b`, both ways.
    pub fn cut(&self, a: IpAddr, b: IpAddr) {
        self.cut_one_way(a, b);
        self.cut_one_way(b, a);
    }

    /// Drops `percent` of the packets between `a` and `b`, both ways, at random.
    pub fn lose(&self, a: IpAddr, b: IpAddr, percent: u32) {
        let rule = format!("numgen random mod 100 < {percent} drop");
        self.add_rule(a, b, &rule);
        self.add_rule(b, a, &rule);
    }

    /// Removes every fault: all links work again.
    pub fn heal(&self) {
        self.run(&format!("flush chain inet {} input\n", self.table));
    }

    fn add_rule(&self, from: IpAddr, to: IpAddr, verdict: &str) {
        self.run(&format!("add rule inet {} input ip saddr {from} ip daddr {to} {verdict}\n", self.table));
    }

    /// Runs an nft script, atomically.
    fn run(&self, script: &str) {
        let child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = child.unwrap_or_else(|e| {
            panic!(
                "the network fault tests need nftables (`nft`; apt-get install -y nftables) and \
                 permission to change the ruleset (root): cannot run nft: {e}"
            )
        });
        child.stdin.take().expect("piped stdin").write_all(script.as_bytes()).expect("write to nft");
        let out = child.wait_with_output().expect("wait for nft");
        assert!(
            out.status.success(),
            "nft refused the rules (the network fault tests need root and nftables):\n{script}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ =
            Command::new("nft").args(["delete", "table", "inet", &self.table]).stderr(Stdio::null()).status();
    }
}
