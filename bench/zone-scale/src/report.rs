//! The markdown report. Pure: no clocks, no IO.

use std::fmt::Write as _;
use std::time::Duration;

use crate::inventory::{self, TONIC_DEFAULT_DECODE};
use crate::propagation;
use crate::stats::ms;

/// The p99 target for 1,000 streams on loopback.
pub const TARGET_P99: Duration = Duration::from_millis(250);

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub fn propagation(runs: &[propagation::Outcome]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| streams | connections | rounds | setup s | per-stream p50 ms | p99 ms | max ms | last stream p50 ms | p99 ms | max ms | apply call p50 ms | missed | configs/stream/round | MiB pushed/round | CPU s/round: global / zones / bench |"
    );
    let _ = writeln!(
        out,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in runs {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.2} | {:.1} | {:.3} / {:.3} / {:.3} |",
            r.streams,
            r.connections,
            r.rounds,
            r.setup.as_secs_f64(),
            ms(r.per_stream.p50),
            ms(r.per_stream.p99),
            ms(r.per_stream.max),
            ms(r.last_stream.p50),
            ms(r.last_stream.p99),
            ms(r.last_stream.max),
            ms(r.apply.p50),
            r.missed,
            r.configs_per_stream_round,
            r.bytes_per_round as f64 / (1024.0 * 1024.0),
            r.cpu_per_round[0].as_secs_f64(),
            r.cpu_per_round[1].as_secs_f64(),
            r.cpu_per_round[2].as_secs_f64(),
        );
    }
    for r in runs.iter().filter(|r| r.streams >= 1000) {
        let met = r.missed == 0 && r.per_stream.p99 <= TARGET_P99;
        let _ = writeln!(
            out,
            "\nTarget (per-stream p99 <= {} ms with {} streams): {} (p99 {:.1} ms, last stream p99 {:.1} ms).",
            ms(TARGET_P99),
            r.streams,
            if met { "met" } else { "NOT met" },
            ms(r.per_stream.p99),
            ms(r.last_stream.p99),
        );
    }
    for r in runs {
        let rss: Vec<String> = r
            .zone_rss_kib
            .iter()
            .map(|(name, kib)| format!("{name} {:.0} MiB", *kib as f64 / 1024.0))
            .collect();
        let _ = writeln!(
            out,
            "\n{} streams: zone VmRSS with the streams open: {}.",
            r.streams,
            rss.join(", ")
        );
    }
    out
}

pub fn inventory(r: &inventory::Outcome) -> String {
    let mut out = String::new();
    let max = |v: &[(String, Duration)]| v.iter().map(|(_, d)| *d).max().unwrap_or_default();
    let each = |v: &[(String, Duration)]| {
        v.iter()
            .map(|(z, d)| format!("{z} {:.0}", ms(*d)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        out,
        "{} services per zone x 3 fake zones = {} exported services; times from sending the three reports.\n",
        r.services_per_zone, r.total_services
    );
    let _ = writeln!(out, "| step | all three, ms | per zone, ms |");
    let _ = writeln!(out, "|---|---:|---|");
    let _ = writeln!(
        out,
        "| (a) global's `InventoryAck` (committed) | {:.0} | {} |",
        ms(max(&r.acks)),
        each(&r.acks)
    );
    let _ = writeln!(
        out,
        "| global's snapshot with all {} services at the fake zones x, y, z | {:.0} | {} |",
        r.total_services,
        ms(max(&r.snapshots)),
        each(&r.snapshots)
    );
    let _ = writeln!(
        out,
        "| (b) real zones a, b, c: a sidecar's config lists all {} services | {:.0} | {} |",
        r.total_services,
        ms(max(&r.sidecars)),
        each(&r.sidecars)
    );
    let _ = writeln!(
        out,
        "| zone x reconnects with `known_version: 0`: complete snapshot | {:.0} | |",
        ms(r.resync)
    );
    let _ = writeln!(
        out,
        "\n| message | encoded bytes | MiB | vs tonic's 4 MiB default decode limit |"
    );
    let _ = writeln!(out, "|---|---:|---:|---|");
    for (what, bytes) in [
        (
            format!(
                "`InventoryReport`, one zone, {} services",
                r.services_per_zone
            ),
            r.report_bytes,
        ),
        (
            format!(
                "`FederationSnapshot`, {} services (version {})",
                r.total_services, r.snapshot_version
            ),
            r.snapshot_bytes,
        ),
        (
            format!("`SidecarConfig`, {} services", r.total_services),
            r.sidecar_config_bytes,
        ),
    ] {
        let verdict = if bytes > TONIC_DEFAULT_DECODE {
            format!(
                "**over** ({:.1}x)",
                bytes as f64 / TONIC_DEFAULT_DECODE as f64
            )
        } else {
            format!(
                "under ({:.0} %)",
                100.0 * bytes as f64 / TONIC_DEFAULT_DECODE as f64
            )
        };
        let _ = writeln!(out, "| {what} | {bytes} | {:.2} | {verdict} |", mib(bytes));
    }
    let _ = writeln!(
        out,
        "\nAfter the reports: {} snapshots reached the fake zones, {} configs the three sidecars.",
        r.snapshots_after, r.configs_after
    );
    let _ = writeln!(
        out,
        "\n| process | VmRSS before MiB | VmRSS after MiB | VmHWM (peak) MiB |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|");
    for m in &r.memory {
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.1} | {:.1} |",
            m.name,
            m.before as f64 / 1024.0,
            m.after as f64 / 1024.0,
            m.peak as f64 / 1024.0
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Summary;

    fn summary(p50: u64, p99: u64) -> Summary {
        Summary {
            samples: 10,
            p50: Duration::from_millis(p50),
            p99: Duration::from_millis(p99),
            max: Duration::from_millis(p99),
        }
    }

    fn run(streams: usize, p99: u64) -> propagation::Outcome {
        propagation::Outcome {
            streams,
            connections: 12,
            rounds: 20,
            setup: Duration::from_secs(3),
            per_stream: summary(40, p99),
            last_stream: summary(60, p99),
            apply: summary(2, 3),
            missed: 0,
            configs_per_stream_round: 1.0,
            bytes_per_round: 1 << 20,
            cpu_per_round: [Duration::from_millis(10); 3],
            zone_rss_kib: vec![("zone-a".into(), 20_480)],
        }
    }

    #[test]
    fn the_target_is_judged_on_the_per_stream_p99_of_1000_streams() {
        let text = propagation(&[run(100, 300), run(1000, 200)]);
        assert!(
            text.contains("with 1000 streams): met (p99 200.0 ms"),
            "{text}"
        );
        assert!(!text.contains("with 100 streams"), "{text}");
        let text = propagation(&[run(1000, 251)]);
        assert!(text.contains("NOT met"), "{text}");
        assert!(text.contains("zone-a 20 MiB"), "{text}");
    }

    #[test]
    fn message_sizes_are_compared_with_the_default_limit() {
        let outcome = inventory::Outcome {
            services_per_zone: 10,
            total_services: 30,
            report_bytes: 1024,
            acks: vec![("x".into(), Duration::from_millis(5))],
            snapshots: vec![],
            sidecars: vec![],
            snapshot_bytes: 5 * 1024 * 1024,
            snapshot_version: 9,
            sidecar_config_bytes: 2 * 1024 * 1024,
            snapshots_after: 3,
            configs_after: 3,
            resync: Duration::from_millis(40),
            memory: vec![],
        };
        let text = inventory(&outcome);
        assert!(
            text.contains("| 5242880 | 5.00 | **over** (1.2x) |"),
            "{text}"
        );
        assert!(text.contains("| 2097152 | 2.00 | under (50 %) |"), "{text}");
        assert!(
            text.contains("| (a) global's `InventoryAck` (committed) | 5 | x 5 |"),
            "{text}"
        );
    }
}
