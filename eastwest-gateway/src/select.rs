//! Pure choices, tested without sockets: which healthy endpoint serves an inbound tunnel, in
//! which order the replicas of a peer zone are tried, how long a stream may take to open, and
//! how a CONNECT authority names a service.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rand::Rng;
use strait_proto as pb;

// === endpoints ===

/// The healthy endpoint with the fewest active tunnels (ties broken at random), skipping the
/// addresses in `tried`. `None` when no healthy endpoint is left.
pub fn pick_endpoint<'a, R: Rng>(
    endpoints: &'a [pb::Endpoint],
    active: &HashMap<String, usize>,
    tried: &HashSet<String>,
    rng: &mut R,
) -> Option<&'a pb::Endpoint> {
    let candidates: Vec<&pb::Endpoint> = endpoints
        .iter()
        .filter(|e| e.healthy && !e.address.is_empty() && !tried.contains(&e.address))
        .collect();
    let load = |e: &pb::Endpoint| active.get(&e.address).copied().unwrap_or(0);
    let least = candidates.iter().map(|e| load(e)).min()?;
    let best: Vec<&pb::Endpoint> = candidates
        .into_iter()
        .filter(|e| load(e) == least)
        .collect();
    best.get(rng.random_range(0..best.len())).copied()
}

// === replicas ===

/// What the pool knows about one gateway replica of a peer zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaState {
    /// A live connection carrying `active` tunnels.
    Up { active: usize },
    /// Never connected yet; its first dial is under way (or about to be).
    Dialing,
    /// Failed recently (a lost connection, a stream that did not open, a dial that failed):
    /// skipped until the background reconnect brings it back.
    Down,
}

/// How a replica is used for one tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Open a stream on its connection now.
    Use(usize),
    /// Wait (bounded) for its first dial, then open a stream.
    AwaitFirstDial(usize),
}

/// The order in which to try the replicas (indexes into `states`): connected ones first, the
/// least loaded first with random tie-breaks (tunnels spread over replicas), then the ones
/// whose first dial is in flight. Down replicas are never tried: failing fast is the point,
/// their reconnects happen in the background.
pub fn order_replicas<R: Rng>(states: &[ReplicaState], rng: &mut R) -> Vec<Attempt> {
    let mut up: Vec<(usize, usize, u32)> = Vec::new();
    let mut dialing: Vec<(usize, u32)> = Vec::new();
    for (i, state) in states.iter().enumerate() {
        match state {
            ReplicaState::Up { active } => up.push((*active, i, rng.random())),
            ReplicaState::Dialing => dialing.push((i, rng.random())),
            ReplicaState::Down => {}
        }
    }
    up.sort_by_key(|(active, _, tie)| (*active, *tie));
    dialing.sort_by_key(|(_, tie)| *tie);
    up.into_iter()
        .map(|(_, i, _)| Attempt::Use(i))
        .chain(dialing.into_iter().map(|(i, _)| Attempt::AwaitFirstDial(i)))
        .collect()
}

/// The fixed part of the stream-open budget: a healthy peer answers a header in well under
/// this even when busy.
pub const OPEN_TIMEOUT_BASE: Duration = Duration::from_millis(500);
/// The budget never grows past this, whatever the RTT estimate says (a caller waiting longer
/// would rather fail over).
pub const OPEN_TIMEOUT_MAX: Duration = Duration::from_secs(3);

/// How long to wait for a peer's answer to a tunnel header: 500 ms + 4 × RTT, capped.
pub fn open_timeout(rtt: Duration) -> Duration {
    (OPEN_TIMEOUT_BASE + rtt.saturating_mul(4)).min(OPEN_TIMEOUT_MAX)
}

/// Pause before the `attempt`-th reconnect (0-based) of a peer: 100 ms doubling to 5 s. The
/// caller adds jitter.
pub fn reconnect_backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(100);
    base.saturating_mul(1u32 << attempt.min(6))
        .min(Duration::from_secs(5))
}

// === authority ===

/// The destination of a CONNECT request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub namespace: String,
    pub port: u16,
}

/// Parses a CONNECT `:authority` of the form `NAME.NAMESPACE:PORT`.
pub fn parse_authority(authority: &str) -> Result<Target, String> {
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| format!("authority {authority:?} has no port (want NAME.NAMESPACE:PORT)"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("authority {authority:?} has no valid port"))?;
    let (name, namespace) = host.split_once('.').ok_or_else(|| {
        format!("authority {authority:?} does not name a service as NAME.NAMESPACE:PORT")
    })?;
    for (what, label) in [("name", name), ("namespace", namespace)] {
        if !is_dns_label(label) {
            return Err(format!(
                "authority {authority:?}: service {what} {label:?} is not a DNS label"
            ));
        }
    }
    Ok(Target {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        port,
    })
}

/// Lowercase letters, digits and `-`, starting with a letter, not ending with `-`, at most 63
/// (the shared rule, [`strait_proto::names::is_rfc1035_label`]).
pub use strait_proto::names::is_rfc1035_label as is_dns_label;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn ep(addr: &str, healthy: bool) -> pb::Endpoint {
        pb::Endpoint {
            address: addr.into(),
            instance: format!("i-{addr}"),
            healthy,
            ..Default::default()
        }
    }

    #[test]
    fn endpoints_healthy_least_loaded_untried() {
        let mut rng = StdRng::seed_from_u64(7);
        let eps = [ep("a:1", true), ep("b:1", false), ep("c:1", true)];
        let mut active = HashMap::new();
        active.insert("a:1".to_owned(), 3);
        let none = HashSet::new();
        for _ in 0..20 {
            let got = pick_endpoint(&eps, &active, &none, &mut rng).unwrap();
            assert_eq!(got.address, "c:1", "the least loaded healthy one");
        }
        let tried: HashSet<String> = ["c:1".to_owned()].into();
        assert_eq!(
            pick_endpoint(&eps, &active, &tried, &mut rng)
                .unwrap()
                .address,
            "a:1"
        );
        let all: HashSet<String> = ["a:1".to_owned(), "c:1".to_owned()].into();
        assert!(pick_endpoint(&eps, &active, &all, &mut rng).is_none());
        assert!(pick_endpoint(&[ep("b:1", false)], &active, &none, &mut rng).is_none());
        // Equal load: both get picked over many draws.
        let even = [ep("x:1", true), ep("y:1", true)];
        let picks: HashSet<String> = (0..50)
            .map(|_| {
                pick_endpoint(&even, &HashMap::new(), &none, &mut rng)
                    .unwrap()
                    .address
                    .clone()
            })
            .collect();
        assert_eq!(picks.len(), 2);
    }

    #[test]
    fn replicas_connected_first_down_never() {
        let mut rng = StdRng::seed_from_u64(1);
        let states = [
            ReplicaState::Down,
            ReplicaState::Dialing,
            ReplicaState::Up { active: 5 },
            ReplicaState::Up { active: 1 },
        ];
        assert_eq!(
            order_replicas(&states, &mut rng),
            vec![Attempt::Use(3), Attempt::Use(2), Attempt::AwaitFirstDial(1)]
        );
        assert!(order_replicas(&[ReplicaState::Down], &mut rng).is_empty());
        // Equal load spreads over both.
        let even = [
            ReplicaState::Up { active: 0 },
            ReplicaState::Up { active: 0 },
        ];
        let firsts: HashSet<String> = (0..50)
            .map(|_| format!("{:?}", order_replicas(&even, &mut rng)[0]))
            .collect();
        assert_eq!(firsts.len(), 2);
    }

    #[test]
    fn timeouts_and_backoff() {
        assert_eq!(open_timeout(Duration::ZERO), Duration::from_millis(500));
        assert_eq!(
            open_timeout(Duration::from_millis(50)),
            Duration::from_millis(700)
        );
        assert_eq!(open_timeout(Duration::from_secs(10)), OPEN_TIMEOUT_MAX);
        assert_eq!(reconnect_backoff(0), Duration::from_millis(100));
        assert_eq!(reconnect_backoff(2), Duration::from_millis(400));
        assert_eq!(reconnect_backoff(40), Duration::from_secs(5));
    }

    #[test]
    fn authorities() {
        assert_eq!(
            parse_authority("echo.demo:8080").unwrap(),
            Target {
                name: "echo".into(),
                namespace: "demo".into(),
                port: 8080
            }
        );
        for bad in [
            "echo.demo",
            "echo:8080",
            "echo.demo:0",
            "echo.demo:99999",
            "Echo.demo:80",
            ".demo:80",
            "echo.:80",
            "echo.demo.svc:80",
            "",
            ":",
        ] {
            assert!(parse_authority(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
