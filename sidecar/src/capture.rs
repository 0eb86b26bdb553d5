//! Traffic capture for `strait sidecar init`: the iptables rules that send a pod's outbound
//! calls to service VIPs, and its inbound app ports, through the sidecar.
//!
//! This module only decides ([`plan`]: settings in, the exact commands out); the binary runs
//! them. The rules live in the `nat` table, in two chains of their own so a second run replaces
//! the first instead of stacking duplicates:
//!
//! - `STRAIT_OUTPUT` (jumped to from `OUTPUT`): connections from the sidecar's own uid (and gid,
//!   when given) `RETURN` first — the sidecar's upstream connections must leave as they are, or
//!   they would be sent back into the sidecar — then TCP to each VIP CIDR is `REDIRECT`ed to the
//!   sidecar's outbound port, where the sidecar reads the VIP back with `SO_ORIGINAL_DST`
//!   ([`crate::outbound::serve_captured`]).
//! - `STRAIT_INBOUND` (jumped to from `PREROUTING`, only with inbound ports): TCP arriving for
//!   one of the app's ports is `REDIRECT`ed to the sidecar's mutual TLS inbound port, so the app
//!   cannot be reached around the sidecar. Traffic the sidecar itself sends to the app stays on
//!   loopback and never crosses `PREROUTING`.
//!
//! Only the VIP ranges are captured, not all outbound traffic (as Istio does): calls to anything
//! outside the mesh, DNS and the Kubernetes API keep working without exceptions to configure.
//! IPv4 only for now: an IPv6 CIDR is refused with a message, not half-applied.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Chain holding the outbound rules.
pub const OUTPUT_CHAIN: &str = "STRAIT_OUTPUT";
/// Chain holding the inbound rules.
pub const INBOUND_CHAIN: &str = "STRAIT_INBOUND";
/// Where the sidecar accepts redirected outbound connections (`--outbound capture:PORT`).
pub const DEFAULT_OUTBOUND_PORT: u16 = 15001;
/// The sidecar's mutual TLS inbound port.
pub const DEFAULT_INBOUND_PORT: u16 = 15008;

/// Why no rules can be generated, naming the setting to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaptureError {
    #[error("--vip-cidr {cidr:?}: {reason}")]
    Cidr { cidr: String, reason: String },
    #[error("--inbound-ports: {0}")]
    InboundPorts(String),
    #[error(
        "--proxy-uid 0: the sidecar must run as a uid of its own (1337 in the injected pod); \
             excluding root would let every root process bypass the sidecar"
    )]
    RootProxy,
    #[error("--{field}: port 0 cannot receive redirected connections")]
    ZeroPort { field: &'static str },
    #[error("nothing to capture: give at least one --vip-cidr or --inbound-ports")]
    Nothing,
}

/// An IPv4 range, `a.b.c.d/n`, with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl FromStr for Cidr {
    type Err = CaptureError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| CaptureError::Cidr {
            cidr: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| err("expected ADDRESS/PREFIX, e.g. 240.240.0.0/16"))?;
        if addr.contains(':') {
            return Err(err("IPv6 ranges are not supported yet"));
        }
        let network: Ipv4Addr = addr
            .parse()
            .map_err(|_| err("not an IPv4 address before the '/'"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| err("the prefix length must be 0..=32"))?;
        if prefix == 0 {
            return Err(err(
                "a /0 would capture every destination, the zone control plane included",
            ));
        }
        let mask = u32::MAX << (32 - u32::from(prefix));
        let masked = Ipv4Addr::from(u32::from(network) & mask);
        if masked != network {
            return Err(err(&format!(
                "host bits are set: did you mean {masked}/{prefix}?"
            )));
        }
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// What `strait sidecar init` is asked to capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureSpec {
    /// TCP to these ranges goes to `outbound_port`.
    pub vip_cidrs: Vec<Cidr>,
    /// TCP arriving for these ports goes to `inbound_port`.
    pub inbound_ports: Vec<u16>,
    /// The uid the sidecar runs as: its own traffic is never captured.
    pub proxy_uid: u32,
    /// Also exclude this gid (when the sidecar runs with a group of its own).
    pub proxy_gid: Option<u32>,
    pub outbound_port: u16,
    pub inbound_port: u16,
}

impl CaptureSpec {
    /// Defaults for the ports; nothing captured yet.
    pub fn new(proxy_uid: u32) -> Self {
        Self {
            vip_cidrs: Vec::new(),
            inbound_ports: Vec::new(),
            proxy_uid,
            proxy_gid: None,
            outbound_port: DEFAULT_OUTBOUND_PORT,
            inbound_port: DEFAULT_INBOUND_PORT,
        }
    }

    fn validate(&self) -> Result<(), CaptureError> {
        if self.proxy_uid == 0 {
            return Err(CaptureError::RootProxy);
        }
        if self.outbound_port == 0 {
            return Err(CaptureError::ZeroPort {
                field: "outbound-port",
            });
        }
        if self.inbound_port == 0 {
            return Err(CaptureError::ZeroPort {
                field: "inbound-port",
            });
        }
        if self.vip_cidrs.is_empty() && self.inbound_ports.is_empty() {
            return Err(CaptureError::Nothing);
        }
        for &port in &self.inbound_ports {
            if port == 0 {
                return Err(CaptureError::InboundPorts("port 0 is not a port".into()));
            }
            if port == self.inbound_port || port == self.outbound_port {
                return Err(CaptureError::InboundPorts(format!(
                    "{port} is one of the sidecar's own ports: redirecting it would loop"
                )));
            }
        }
        Ok(())
    }
}

/// One `iptables` invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The arguments after the program name.
    pub args: Vec<String>,
    /// Cleanup of a previous run: failing (nothing to remove) is expected.
    pub may_fail: bool,
}

impl Rule {
    fn new(args: &[&str], may_fail: bool) -> Self {
        Self {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            may_fail,
        }
    }

    /// The command as a shell line (`|| true` after a cleanup step).
    pub fn shell(&self, program: &str) -> String {
        let line = std::iter::once(program)
            .chain(self.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ");
        if self.may_fail {
            format!("{line} 2>/dev/null || true")
        } else {
            line
        }
    }
}

/// The commands that install `spec`, in order: first the removal of whatever an earlier run
/// left (each may fail), then the chains and the jumps to them (the jumps last, so no packet
/// meets a half-built chain).
pub fn plan(spec: &CaptureSpec) -> Result<Vec<Rule>, CaptureError> {
    spec.validate()?;
    // `-w`: wait for the xtables lock instead of failing when another writer holds it.
    let nat = |rest: &[&str], may_fail: bool| {
        let mut args = vec!["-w", "-t", "nat"];
        args.extend_from_slice(rest);
        Rule::new(&args, may_fail)
    };
    let mut rules = vec![
        nat(&["-D", "OUTPUT", "-p", "tcp", "-j", OUTPUT_CHAIN], true),
        nat(
            &["-D", "PREROUTING", "-p", "tcp", "-j", INBOUND_CHAIN],
            true,
        ),
        nat(&["-F", OUTPUT_CHAIN], true),
        nat(&["-X", OUTPUT_CHAIN], true),
        nat(&["-F", INBOUND_CHAIN], true),
        nat(&["-X", INBOUND_CHAIN], true),
    ];
    let uid = spec.proxy_uid.to_string();
    let gid = spec.proxy_gid.map(|g| g.to_string());
    let outbound_port = spec.outbound_port.to_string();
    let inbound_port = spec.inbound_port.to_string();

    if !spec.vip_cidrs.is_empty() {
        rules.push(nat(&["-N", OUTPUT_CHAIN], false));
        rules.push(nat(
            &[
                "-A",
                OUTPUT_CHAIN,
                "-m",
                "owner",
                "--uid-owner",
                &uid,
                "-j",
                "RETURN",
            ],
            false,
        ));
        if let Some(gid) = &gid {
            rules.push(nat(
                &[
                    "-A",
                    OUTPUT_CHAIN,
                    "-m",
                    "owner",
                    "--gid-owner",
                    gid,
                    "-j",
                    "RETURN",
                ],
                false,
            ));
        }
        for cidr in &spec.vip_cidrs {
            let cidr = cidr.to_string();
            rules.push(nat(
                &[
                    "-A",
                    OUTPUT_CHAIN,
                    "-p",
                    "tcp",
                    "-d",
                    &cidr,
                    "-j",
                    "REDIRECT",
                    "--to-ports",
                    &outbound_port,
                ],
                false,
            ));
        }
    }
    if !spec.inbound_ports.is_empty() {
        rules.push(nat(&["-N", INBOUND_CHAIN], false));
        for port in &spec.inbound_ports {
            let port = port.to_string();
            rules.push(nat(
                &[
                    "-A",
                    INBOUND_CHAIN,
                    "-p",
                    "tcp",
                    "--dport",
                    &port,
                    "-j",
                    "REDIRECT",
                    "--to-ports",
                    &inbound_port,
                ],
                false,
            ));
        }
    }
    if !spec.vip_cidrs.is_empty() {
        rules.push(nat(
            &["-A", "OUTPUT", "-p", "tcp", "-j", OUTPUT_CHAIN],
            false,
        ));
    }
    if !spec.inbound_ports.is_empty() {
        rules.push(nat(
            &["-A", "PREROUTING", "-p", "tcp", "-j", INBOUND_CHAIN],
            false,
        ));
    }
    Ok(rules)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn lines(spec: &CaptureSpec) -> Vec<String> {
        plan(spec)
            .unwrap()
            .iter()
            .map(|r| r.shell("iptables"))
            .collect()
    }

    #[test]
    fn outbound_and_inbound_rules_exactly() {
        let mut spec = CaptureSpec::new(1337);
        spec.vip_cidrs = vec![
            "240.240.0.0/16".parse().unwrap(),
            "10.96.0.0/12".parse().unwrap(),
        ];
        spec.inbound_ports = vec![8080, 9090];
        assert_eq!(
            lines(&spec),
            [
                "iptables -w -t nat -D OUTPUT -p tcp -j STRAIT_OUTPUT 2>/dev/null || true",
                "iptables -w -t nat -D PREROUTING -p tcp -j STRAIT_INBOUND 2>/dev/null || true",
                "iptables -w -t nat -F STRAIT_OUTPUT 2>/dev/null || true",
                "iptables -w -t nat -X STRAIT_OUTPUT 2>/dev/null || true",
                "iptables -w -t nat -F STRAIT_INBOUND 2>/dev/null || true",
                "iptables -w -t nat -X STRAIT_INBOUND 2>/dev/null || true",
                "iptables -w -t nat -N STRAIT_OUTPUT",
                "iptables -w -t nat -A STRAIT_OUTPUT -m owner --uid-owner 1337 -j RETURN",
                "iptables -w -t nat -A STRAIT_OUTPUT -p tcp -d 240.240.0.0/16 -j REDIRECT --to-ports 15001",
                "iptables -w -t nat -A STRAIT_OUTPUT -p tcp -d 10.96.0.0/12 -j REDIRECT --to-ports 15001",
                "iptables -w -t nat -N STRAIT_INBOUND",
                "iptables -w -t nat -A STRAIT_INBOUND -p tcp --dport 8080 -j REDIRECT --to-ports 15008",
                "iptables -w -t nat -A STRAIT_INBOUND -p tcp --dport 9090 -j REDIRECT --to-ports 15008",
                "iptables -w -t nat -A OUTPUT -p tcp -j STRAIT_OUTPUT",
                "iptables -w -t nat -A PREROUTING -p tcp -j STRAIT_INBOUND",
            ]
        );
    }

    #[test]
    fn the_exclusion_comes_before_any_redirect() {
        let mut spec = CaptureSpec::new(1337);
        spec.proxy_gid = Some(1337);
        spec.outbound_port = 15101;
        spec.vip_cidrs = vec!["127.240.0.0/16".parse().unwrap()];
        let lines = lines(&spec);
        let first_redirect = lines.iter().position(|l| l.contains("REDIRECT")).unwrap();
        let uid = lines
            .iter()
            .position(|l| l.contains("--uid-owner 1337"))
            .unwrap();
        let gid = lines
            .iter()
            .position(|l| l.contains("--gid-owner 1337"))
            .unwrap();
        assert!(uid < first_redirect && gid < first_redirect, "{lines:#?}");
        assert!(lines[first_redirect].ends_with("--to-ports 15101"));
        // Outbound only: no inbound chain is created or jumped to.
        assert!(
            !lines
                .iter()
                .any(|l| !l.contains("||") && l.contains(INBOUND_CHAIN))
        );
        // The jump into the chain is the very last step.
        assert_eq!(
            lines.last().unwrap(),
            "iptables -w -t nat -A OUTPUT -p tcp -j STRAIT_OUTPUT"
        );
    }

    #[test]
    fn inbound_only() {
        let mut spec = CaptureSpec::new(1337);
        spec.inbound_ports = vec![8080];
        spec.inbound_port = 15006;
        let lines = lines(&spec);
        assert!(
            !lines
                .iter()
                .any(|l| !l.contains("||") && l.contains(OUTPUT_CHAIN))
        );
        assert!(lines.contains(
            &"iptables -w -t nat -A STRAIT_INBOUND -p tcp --dport 8080 -j REDIRECT --to-ports 15006"
                .to_owned()
        ));
    }

    #[test]
    fn cidrs_are_checked() {
        assert_eq!(
            "240.240.0.0/16".parse::<Cidr>().unwrap().to_string(),
            "240.240.0.0/16"
        );
        let msg = |s: &str| s.parse::<Cidr>().unwrap_err().to_string();
        assert!(msg("240.240.0.1/16").contains("did you mean 240.240.0.0/16"));
        assert!(msg("240.240.0.0").contains("ADDRESS/PREFIX"));
        assert!(msg("fd00::/64").contains("IPv6"));
        assert!(msg("240.240.0.0/33").contains("0..=32"));
        assert!(msg("0.0.0.0/0").contains("every destination"));
        assert!(msg("240.240.0.x/16").contains("IPv4"));
        assert!("10.1.2.3/32".parse::<Cidr>().is_ok());
    }

    #[test]
    fn settings_that_would_loop_or_do_nothing_are_refused() {
        let mut spec = CaptureSpec::new(0);
        spec.vip_cidrs = vec!["240.240.0.0/16".parse().unwrap()];
        assert_eq!(plan(&spec), Err(CaptureError::RootProxy));

        let spec = CaptureSpec::new(1337);
        assert_eq!(plan(&spec), Err(CaptureError::Nothing));

        let mut spec = CaptureSpec::new(1337);
        spec.inbound_ports = vec![8080, 15008];
        let err = plan(&spec).unwrap_err().to_string();
        assert!(err.contains("15008") && err.contains("loop"), "{err}");

        let mut spec = CaptureSpec::new(1337);
        spec.vip_cidrs = vec!["240.240.0.0/16".parse().unwrap()];
        spec.outbound_port = 0;
        assert!(
            plan(&spec)
                .unwrap_err()
                .to_string()
                .contains("outbound-port")
        );
    }
}
