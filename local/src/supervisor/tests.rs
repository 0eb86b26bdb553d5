use std::cell::RefCell;
use std::net::TcpListener;
use std::path::Path;

use nix::unistd::Pid;

use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Kills the process when a test ends, failed or not, so no sleeper outlives the tests.
struct Reap(ProcessRecord);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = kill(&self.0, Signal::SIGKILL);
    }
}

fn spec(dir: &Path, name: &str, program: &str, args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        name: name.to_owned(),
        kind: ProcessKind::App,
        zone: Some("a".to_owned()),
        node_id: None,
        program: PathBuf::from(program),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        env: BTreeMap::new(),
        addresses: BTreeMap::new(),
        log_dir: dir.join("logs"),
    }
}

/// A stand-in admin port answering every request with `status` and `body`, on a thread.
fn fake_admin(status: &'static str, body: &'static str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            // Read the whole request head before answering, like a real server.
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok(addr)
}

#[test]
fn detached_process_is_recorded_and_stopped_with_sigterm() -> TestResult {
    let dir = tempfile::tempdir()?;
    let record = spawn(&spec(dir.path(), "sleeper", "sleep", &["30"]))?;
    let _reap = Reap(record.clone());
    assert_eq!(record.command, vec!["sleep", "30"]);
    assert_eq!(record.log, dir.path().join("logs/sleeper.log"));
    assert!(is_running(&record));
    // Its own process group, so the terminal's Ctrl-C does not reach it.
    let pid = Pid::from_raw(i32::try_from(record.pid)?);
    assert_eq!(nix::unistd::getpgid(Some(pid))?, pid);
    assert_ne!(nix::unistd::getpgid(None)?, pid);

    let lines = RefCell::new(Vec::new());
    let report = stop_all(
        std::slice::from_ref(&record),
        Duration::from_secs(10),
        &|p| lines.borrow_mut().push(p.to_string()),
    );
    assert!(
        matches!(
            report.outcomes.as_slice(),
            [(name, StopOutcome::Terminated { .. })] if name == "sleeper"
        ),
        "{report:?}"
    );
    assert!(report.all_stopped());
    assert!(!is_running(&record));
    let lines = lines.into_inner();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[1].starts_with("sleeper stopped ("), "{lines:?}");

    // Stopping again is fine: it is already gone.
    let again = stop_all(&[record], Duration::from_secs(1), &|_| {});
    assert_eq!(again.outcomes[0].1, StopOutcome::AlreadyGone);
    Ok(())
}

#[test]
fn a_process_ignoring_sigterm_is_killed_after_the_grace() -> TestResult {
    let dir = tempfile::tempdir()?;
    let record = spawn(&spec(
        dir.path(),
        "stubborn",
        "/bin/sh",
        // The quotes keep the marker out of the command line, which the log's first line shows.
        &[
            "-c",
            "trap '' TERM; echo trap''ped; while :; do sleep 0.05; done",
        ],
    ))?;
    let _reap = Reap(record.clone());
    // The trap must be installed before SIGTERM is sent, or the test proves nothing.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&record.log)?.contains("trapped") {
        assert!(Instant::now() < deadline, "the shell never started");
        std::thread::sleep(POLL_INTERVAL);
    }
    let report = stop_all(
        std::slice::from_ref(&record),
        Duration::from_millis(300),
        &|_| {},
    );
    assert!(
        matches!(report.outcomes[0].1, StopOutcome::Killed { .. }),
        "{report:?}"
    );
    assert!(!is_running(&record));
    Ok(())
}

#[test]
fn a_process_that_exits_fails_wait_ready_fast_with_its_log() -> TestResult {
    let dir = tempfile::tempdir()?;
    // Nothing listens on this port: only the exit can end the wait early.
    let [admin] = ports_for_test()?;
    let mut spec = spec(
        dir.path(),
        "crasher",
        "/bin/sh",
        &[
            "-c",
            "echo 'error: address 127.0.0.1:7401 in use' >&2; exit 3",
        ],
    );
    spec.addresses.insert("admin".to_owned(), admin.to_string());
    let record = spawn(&spec)?;

    let started = Instant::now();
    let err = wait_ready(&record, started + Duration::from_secs(30))
        .err()
        .ok_or("wait_ready succeeded for a process that exited")?;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "not fast: {:?}",
        started.elapsed()
    );
    let message = err.to_string();
    assert!(
        matches!(err, SupervisorError::ExitedBeforeReady { .. }),
        "{message}"
    );
    assert!(message.contains("exit status 3"), "{message}");
    assert!(
        message.contains("address 127.0.0.1:7401 in use"),
        "{message}"
    );
    assert!(message.contains("crasher.log"), "{message}");
    Ok(())
}

#[test]
fn wait_ready_returns_on_200_and_times_out_on_503() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut ready = spec(dir.path(), "ready-app", "sleep", &["30"]);
    ready.addresses.insert(
        "admin".to_owned(),
        fake_admin("200 OK", "ready\n")?.to_string(),
    );
    let events = RefCell::new(Vec::new());
    let record = start(&ready, Instant::now() + Duration::from_secs(10), &|p| {
        events.borrow_mut().push(p.to_string())
    })?;
    let _reap = Reap(record.clone());
    let events = events.into_inner();
    assert_eq!(events[0], "starting ready-app ...");
    assert!(events[1].starts_with("ready-app ready ("), "{events:?}");

    let mut unready = spec(dir.path(), "unready-app", "sleep", &["30"]);
    unready.addresses.insert(
        "admin".to_owned(),
        fake_admin("503 Service Unavailable", "not ready: no leader\n")?.to_string(),
    );
    let err = start(
        &unready,
        Instant::now() + Duration::from_millis(500),
        &|_| {},
    )
    .err()
    .ok_or("start succeeded against a 503")?;
    let message = err.to_string();
    assert!(matches!(err, SupervisorError::NotReady { .. }), "{message}");
    assert!(message.contains("503 not ready: no leader"), "{message}");

    // The failed start cleaned up after itself; the ready one is ours to stop.
    let report = stop_all(&[record], Duration::from_secs(10), &|_| {});
    assert!(report.all_stopped(), "{report:?}");
    Ok(())
}

#[test]
fn a_process_started_by_an_earlier_cli_is_found_and_stopped() -> TestResult {
    let dir = tempfile::tempdir()?;
    // `setsid -f` (util-linux) forks the sleeper into its own session and process group,
    // as `spawn` does, and returns: the sleeper is not a child of this process, so only
    // the pid checks (`kill(pid, 0)`, group, command line) can find it.
    let out = Command::new("setsid")
        .args([
            "-f",
            "/bin/sh",
            "-c",
            "echo $$; exec sleep 30 >/dev/null 2>&1",
        ])
        .output()?;
    let pid: u32 = String::from_utf8(out.stdout)?.trim().parse()?;
    let record = ProcessRecord {
        name: "zone-a".to_owned(),
        kind: ProcessKind::Zone,
        zone: Some("a".to_owned()),
        pid,
        node_id: None,
        addresses: BTreeMap::new(),
        command: vec!["sleep".to_owned(), "30".to_owned()],
        log: dir.path().join("logs/zone-a.log"),
    };
    let _reap = Reap(record.clone());
    assert!(is_running(&record));
    let report = stop_all(
        std::slice::from_ref(&record),
        Duration::from_secs(10),
        &|_| {},
    );
    assert!(
        matches!(report.outcomes[0].1, StopOutcome::Terminated { .. }),
        "{report:?}"
    );
    assert!(!is_running(&record));
    Ok(())
}

#[test]
fn a_reused_pid_is_never_signalled() -> TestResult {
    let dir = tempfile::tempdir()?;
    // This test process stands in for an unrelated program that got the recorded pid.
    let record = ProcessRecord {
        name: "global-1".to_owned(),
        kind: ProcessKind::Global,
        zone: None,
        pid: std::process::id(),
        node_id: Some(1),
        addresses: BTreeMap::new(),
        command: vec!["strait".to_owned(), "global".to_owned(), "run".to_owned()],
        log: dir.path().join("logs/global-1.log"),
    };
    assert!(!is_running(&record));
    let killed = kill(&record, Signal::SIGKILL);
    assert!(
        matches!(killed, Err(SupervisorError::NotOurs { .. })),
        "{killed:?}"
    );
    let report = stop_all(
        std::slice::from_ref(&record),
        Duration::from_secs(1),
        &|_| {},
    );
    assert!(
        matches!(report.outcomes[0].1, StopOutcome::NotOurs { .. }),
        "{report:?}"
    );

    for pid in [0, 1, u32::MAX] {
        let bad = ProcessRecord {
            pid,
            ..record.clone()
        };
        assert!(matches!(
            kill(&bad, Signal::SIGTERM),
            Err(SupervisorError::InvalidPid { .. })
        ));
        assert!(!report_of(&bad).all_stopped());
    }
    Ok(())
}

#[test]
fn kill_signals_a_running_process() -> TestResult {
    let dir = tempfile::tempdir()?;
    let record = spawn(&spec(dir.path(), "victim", "sleep", &["30"]))?;
    let _reap = Reap(record.clone());
    kill(&record, Signal::SIGKILL)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_running(&record) {
        assert!(Instant::now() < deadline, "SIGKILL did not take");
        std::thread::sleep(POLL_INTERVAL);
    }
    assert!(matches!(
        kill(&record, Signal::SIGTERM),
        Err(SupervisorError::NotRunning { .. })
    ));
    Ok(())
}

#[test]
fn names_that_are_not_file_names_are_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    for name in ["", ".hidden", "../escape", "a/b", "with space"] {
        let result = spawn(&spec(dir.path(), name, "sleep", &["30"]));
        assert!(
            matches!(result, Err(SupervisorError::InvalidName { .. })),
            "{name:?}"
        );
    }
    let missing = spawn(&spec(dir.path(), "ghost", "/nonexistent/program", &[]));
    assert!(
        matches!(missing, Err(SupervisorError::Spawn { .. })),
        "{missing:?}"
    );
    Ok(())
}

fn report_of(record: &ProcessRecord) -> StopReport {
    stop_all(
        std::slice::from_ref(record),
        Duration::from_millis(100),
        &|_| {},
    )
}

fn ports_for_test() -> Result<[SocketAddr; 1], Box<dyn std::error::Error>> {
    let ports = crate::ports::free_loopback_ports(1)?;
    ports.try_into().map_err(|_| "wrong number of ports".into())
}
