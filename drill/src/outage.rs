//! Taking a service out of a zone, and undoing it: one [`Outage`] per drill mode.
//!
//! - `drain`: through the control plane ([`Admin::set_drain`]; works on any federation);
//! - `kill`: SIGKILLs the service's processes (apps and sidecars) in the zone, from the local
//!   federation's `processes.json`, and starts them again to restore;
//! - `partition`: as root, drops the UDP traffic to the zone's gateways (iptables), so other
//!   zones lose their way into it; removed to restore.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use strait_local::processes::{self, ProcessKind, ProcessRecord};
use strait_local::supervisor::{self, ProcessSpec, Signal, SupervisorError};

use crate::admin::Admin;
use crate::failover::{DrillError, DrillSpec};

/// How a drill takes the service out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Drain,
    Kill,
    Partition,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Drain => "drain",
            Mode::Kill => "kill",
            Mode::Partition => "partition",
        }
    }
}

/// What a mode did, so it can be undone.
#[derive(Debug)]
pub(crate) enum Outage {
    Drain {
        namespace: String,
        service: String,
        zone: String,
        applied: bool,
    },
    Kill {
        dir: PathBuf,
        victims: Vec<ProcessRecord>,
        /// The victims taken down (killed now, or found already gone), in start order.
        killed: Vec<ProcessRecord>,
    },
    Partition {
        ports: Vec<String>,
        applied: Vec<String>,
    },
}

fn federation_dir(spec: &DrillSpec) -> Result<&Path, DrillError> {
    spec.dir.as_deref().ok_or(DrillError::NoFederationDir)
}

impl Outage {
    /// Checks the mode can work here before any load is sent.
    pub(crate) fn prepare(spec: &DrillSpec) -> Result<Self, DrillError> {
        match spec.mode {
            Mode::Drain => Ok(Outage::Drain {
                namespace: spec.namespace.clone(),
                service: spec.service.clone(),
                zone: spec.zone.clone(),
                applied: false,
            }),
            Mode::Kill => {
                let dir = federation_dir(spec)?;
                let records =
                    processes::read(dir).map_err(|source| DrillError::KillNeedsFederation {
                        dir: dir.to_owned(),
                        source: Box::new(source),
                    })?;
                let victims = victims(&records, &spec.service, &spec.zone);
                if victims.is_empty() {
                    return Err(DrillError::NoVictims {
                        service: spec.service.clone(),
                        zone: spec.zone.clone(),
                        dir: dir.to_owned(),
                    });
                }
                Ok(Outage::Kill {
                    dir: dir.to_owned(),
                    victims,
                    killed: Vec::new(),
                })
            }
            Mode::Partition => {
                if !nix::unistd::geteuid().is_root() {
                    return Err(DrillError::PartitionNeedsRoot);
                }
                if spec.from.as_deref().is_none_or(|f| f == spec.zone) {
                    return Err(DrillError::PartitionNeedsFrom {
                        zone: spec.zone.clone(),
                    });
                }
                let dir = federation_dir(spec)?;
                let records = processes::read(dir).map_err(|source| DrillError::Processes {
                    path: processes::path(dir),
                    source: Box::new(source),
                })?;
                let ports = gateway_ports(&records, &spec.zone);
                if ports.is_empty() {
                    return Err(DrillError::NoGateway {
                        zone: spec.zone.clone(),
                        dir: dir.to_owned(),
                    });
                }
                iptables(&["-L", "-n"]).map_err(|e| DrillError::NoIptables(Box::new(e)))?;
                Ok(Outage::Partition {
                    ports,
                    applied: Vec::new(),
                })
            }
        }
    }

    pub(crate) async fn take_out(&mut self, admin: &impl Admin) -> Result<(), DrillError> {
        match self {
            Outage::Drain {
                namespace,
                service,
                zone,
                applied,
            } => {
                admin
                    .set_drain(namespace, service, zone, true)
                    .await
                    .map_err(DrillError::Admin)?;
                *applied = true;
            }
            Outage::Kill {
                victims, killed, ..
            } => {
                for victim in victims.iter() {
                    match supervisor::kill(victim, Signal::SIGKILL) {
                        // Already down is what the drill wants; it is started again with the rest.
                        Ok(()) | Err(SupervisorError::NotRunning { .. }) => {
                            killed.push(victim.clone());
                        }
                        Err(source) => {
                            return Err(DrillError::Kill {
                                name: victim.name.clone(),
                                source: Box::new(source),
                            });
                        }
                    }
                }
            }
            Outage::Partition { ports, applied } => {
                for port in ports.iter() {
                    iptables(&drop_rule("-I", port))?;
                    applied.push(port.clone());
                }
            }
        }
        Ok(())
    }

    /// Undoes whatever [`Outage::take_out`] applied (nothing if it applied nothing); safe to
    /// call once whatever happened before.
    pub(crate) async fn restore(&mut self, admin: &impl Admin) -> Result<(), DrillError> {
        match self {
            Outage::Drain {
                namespace,
                service,
                zone,
                applied,
            } => {
                if std::mem::take(applied) {
                    admin
                        .set_drain(namespace, service, zone, false)
                        .await
                        .map_err(DrillError::Admin)?;
                }
            }
            Outage::Kill { dir, killed, .. } => {
                let killed = std::mem::take(killed);
                restart(dir, &killed).await?;
            }
            Outage::Partition { applied, .. } => {
                for port in std::mem::take(applied) {
                    iptables(&drop_rule("-D", &port))?;
                }
            }
        }
        Ok(())
    }
}

/// The processes of `service` in `zone` (its apps and sidecars are named `SERVICE-...`).
fn victims(records: &[ProcessRecord], service: &str, zone: &str) -> Vec<ProcessRecord> {
    let prefix = format!("{service}-");
    records
        .iter()
        .filter(|r| r.zone.as_deref() == Some(zone) && r.name.starts_with(&prefix))
        .cloned()
        .collect()
}

/// The UDP (QUIC) ports of `zone`'s gateways.
fn gateway_ports(records: &[ProcessRecord], zone: &str) -> Vec<String> {
    records
        .iter()
        .filter(|r| r.kind == ProcessKind::Gateway && r.zone.as_deref() == Some(zone))
        .filter_map(|r| r.address("quic"))
        .filter_map(|a| a.rsplit_once(':').map(|(_, p)| p.to_owned()))
        .collect()
}

/// Starts `victims` again (in their start order: apps before their sidecars) and records their
/// new pids in `processes.json`.
async fn restart(dir: &Path, victims: &[ProcessRecord]) -> Result<(), DrillError> {
    for victim in victims {
        let spec = ProcessSpec::again(victim).ok_or_else(|| DrillError::NoCommand {
            name: victim.name.clone(),
        })?;
        let record = tokio::task::spawn_blocking(move || {
            supervisor::start(&spec, Instant::now() + Duration::from_secs(60), &|_| {})
        })
        .await
        .map_err(DrillError::RestartTask)??;
        let mut records = processes::read(dir)?;
        if let Some(slot) = records.iter_mut().find(|r| r.name == record.name) {
            *slot = record;
        }
        processes::write(dir, &records)?;
    }
    Ok(())
}

fn drop_rule(action: &str, port: &str) -> Vec<String> {
    [
        action,
        "INPUT",
        "-p",
        "udp",
        "--dport",
        port,
        "-j",
        "DROP",
        "-m",
        "comment",
        "--comment",
        "strait-drill",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn iptables<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Result<(), DrillError> {
    let out = std::process::Command::new("iptables")
        .args(args)
        .output()
        .map_err(DrillError::RunIptables)?;
    if !out.status.success() {
        return Err(DrillError::Iptables {
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn record(name: &str, kind: ProcessKind, zone: &str, quic: Option<&str>) -> ProcessRecord {
        ProcessRecord {
            name: name.to_owned(),
            kind,
            zone: Some(zone.to_owned()),
            pid: 4242,
            node_id: None,
            addresses: quic
                .map(|q| BTreeMap::from([("quic".to_owned(), q.to_owned())]))
                .unwrap_or_default(),
            command: vec!["strait".to_owned()],
            log: PathBuf::from("/tmp/x.log"),
        }
    }

    #[test]
    fn kill_picks_the_service_processes_of_the_zone_only() {
        let records = [
            record("echo-v1-a", ProcessKind::App, "a", None),
            record("echo-v1-a-sidecar", ProcessKind::Sidecar, "a", None),
            record("echo-v1-b", ProcessKind::App, "b", None),
            record("echoes-a", ProcessKind::App, "a", None),
            record("zone-a", ProcessKind::Zone, "a", None),
        ];
        let names: Vec<String> = victims(&records, "echo", "a")
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["echo-v1-a", "echo-v1-a-sidecar"]);
    }

    #[test]
    fn partition_drops_the_zone_gateways_quic_ports() {
        let records = [
            record(
                "gateway-a-1",
                ProcessKind::Gateway,
                "a",
                Some("127.0.0.1:4001"),
            ),
            record(
                "gateway-a-2",
                ProcessKind::Gateway,
                "a",
                Some("127.0.0.1:4002"),
            ),
            record(
                "gateway-b-1",
                ProcessKind::Gateway,
                "b",
                Some("127.0.0.1:4003"),
            ),
            record("zone-a", ProcessKind::Zone, "a", Some("127.0.0.1:4004")),
        ];
        assert_eq!(gateway_ports(&records, "a"), ["4001", "4002"]);
        assert_eq!(
            drop_rule("-D", "4001").join(" "),
            "-D INPUT -p udp --dport 4001 -j DROP -m comment --comment strait-drill"
        );
    }
}
