//! A federation started with `strait up` (the release binary), and what the benchmark needs
//! from it: process addresses and pids from `DIR/processes.json`, the CLI with `DIR/config.yaml`,
//! an Admin client and the trust bundle.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;
use strait_global::admin_client::{AdminClient, ClientConfig};
use strait_local::processes::ProcessRecord;
use strait_trust::TrustBundle;

use crate::procs::Cleanup;

pub const TRUST_DOMAIN: &str = "strait.local";

#[derive(Debug)]
pub struct Federation {
    bin: PathBuf,
    dir: PathBuf,
    processes: Vec<ProcessRecord>,
}

impl Federation {
    /// `strait up --dir DIR ARGS...`; registered with `cleanup` before it starts.
    pub async fn up(
        bin: &Path,
        dir: &Path,
        args: &[&str],
        cleanup: &mut Cleanup,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        cleanup.track_federation(dir);
        let status = tokio::process::Command::new(bin)
            .arg("up")
            .arg("--dir")
            .arg(dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("up.out"))?)
            .stderr(std::fs::File::create(dir.join("up.err"))?)
            .kill_on_drop(true)
            .status()
            .await
            .with_context(|| format!("running {} up", bin.display()))?;
        if !status.success() {
            let err = std::fs::read_to_string(dir.join("up.err")).unwrap_or_default();
            anyhow::bail!("strait up failed ({status}):\n{err}");
        }
        let processes = strait_local::processes::read(dir)?;
        Ok(Federation {
            bin: bin.to_owned(),
            dir: dir.to_owned(),
            processes,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn process(&self, name: &str) -> anyhow::Result<&ProcessRecord> {
        self.processes
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("no process {name} in processes.json"))
    }

    pub fn processes(&self) -> &[ProcessRecord] {
        &self.processes
    }

    /// `name`'s address `which` (`api`, `admin`).
    pub fn address(&self, name: &str, which: &str) -> anyhow::Result<String> {
        self.process(name)?
            .address(which)
            .map(str::to_owned)
            .with_context(|| format!("{name} has no {which} address"))
    }

    /// Runs `strait ARGS` with this federation's config; its trimmed stdout.
    pub async fn strait(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = tokio::process::Command::new(&self.bin)
            .args(args)
            .env("STRAIT_CONFIG", self.dir.join("config.yaml"))
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running strait {}", args.join(" ")))?;
        anyhow::ensure!(
            out.status.success(),
            "strait {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    pub fn admin_client(&self) -> anyhow::Result<AdminClient> {
        let config = ClientConfig::load(&self.dir.join("config.yaml"))?;
        Ok(AdminClient::new(&config)?)
    }

    /// The federation's trust bundle (written by the first global node for the operator).
    pub fn bundle(&self) -> anyhow::Result<TrustBundle> {
        let path = self.dir.join("admin/bundle.pem");
        let pem = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(TrustBundle::from_pem(TRUST_DOMAIN, &pem)?)
    }
}
