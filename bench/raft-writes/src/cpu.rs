//! CPU time of processes from `/proc/PID/stat` (user + system, all threads), to tell how much
//! of the two cores each system burns per write: on a small machine, CPU and not the disk is
//! often what limits a cluster whose three nodes share it.

use std::time::Duration;

/// `/proc` reports CPU time in USER_HZ ticks, which the kernel ABI fixes at 100 per second.
const TICK: Duration = Duration::from_millis(10);

/// User + system CPU time of `pid` so far.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

fn parse_stat(stat: &str) -> Option<Duration> {
    // The command name (field 2) may hold spaces and parentheses; fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of proc(5); `rest` starts at field 3.
    let utime: u32 = fields.get(11)?.parse().ok()?;
    let stime: u32 = fields.get(12)?.parse().ok()?;
    Some(TICK * utime + TICK * stime)
}

/// Busy CPU time of the whole machine (all cores) from the first line of `/proc/stat`:
/// everything but idle and iowait. Other work on a shared machine shows up here.
pub fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine(stat.lines().next()?)
}

fn parse_machine(line: &str) -> Option<Duration> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let ticks: Vec<u64> = fields.map(|f| f.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user]
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum();
    Some(TICK * u32::try_from(busy).ok()?)
}

/// CPU time of a set of processes, of this one and of the machine, read at the start and end
/// of a run.
#[derive(Debug)]
pub struct Meter {
    pids: Vec<u32>,
    servers: Duration,
    client: Duration,
    machine: Duration,
}

/// CPU used during a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// All server processes together.
    pub servers: Duration,
    /// This benchmark process (the writers: TLS, encoding, HTTP).
    pub client: Duration,
    /// The whole machine, all cores: the two above plus anything else running.
    pub machine: Duration,
}

impl Meter {
    pub fn start(pids: &[u32]) -> Self {
        Meter {
            pids: pids.to_vec(),
            servers: total(pids),
            client: process_cpu(std::process::id()).unwrap_or_default(),
            machine: machine_busy().unwrap_or_default(),
        }
    }

    pub fn stop(self) -> Usage {
        Usage {
            servers: total(&self.pids).saturating_sub(self.servers),
            client: process_cpu(std::process::id())
                .unwrap_or_default()
                .saturating_sub(self.client),
            machine: machine_busy()
                .unwrap_or_default()
                .saturating_sub(self.machine),
        }
    }
}

fn total(pids: &[u32]) -> Duration {
    pids.iter().filter_map(|&pid| process_cpu(pid)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utime_and_stime_are_read_past_a_command_name_with_spaces() {
        let stat = "4242 (strait (global) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 40 0 0 20 0 9 0 1000 1 1";
        assert_eq!(parse_stat(stat), Some(Duration::from_millis(2900)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn machine_busy_time_leaves_out_idle_and_iowait() {
        let line = "cpu  100 5 50 9000 300 1 2 3 0 0";
        assert_eq!(parse_machine(line), Some(Duration::from_millis(1610)));
        assert_eq!(parse_machine("cpu0 1 2 3 4"), None);
    }

    #[test]
    fn this_process_has_a_cpu_time() {
        assert!(process_cpu(std::process::id()).is_some());
    }
}
