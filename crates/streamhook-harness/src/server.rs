//! The real `streamhook-server` binary as a child process: started from a generated config,
//! killed with SIGKILL, or stopped with SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A server process and what it needs to restart.
#[derive(Debug)]
pub struct ServerProcess {
    bin: PathBuf,
    config: PathBuf,
    log: PathBuf,
    /// The webhook port.
    pub port: u16,
    child: Option<Child>,
}

/// A free loopback port.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl ServerProcess {
    /// Writes `config` (TOML, without `listen`) into `dir` and prepares to run `bin` with it.
    pub fn new(bin: &Path, dir: &Path, config: &str) -> Result<ServerProcess> {
        let port = free_port()?;
        let path = dir.join("streamhook.toml");
        std::fs::write(&path, format!("listen = \"127.0.0.1:{port}\"\n{config}"))?;
        Ok(ServerProcess {
            bin: bin.to_owned(),
            config: path,
            log: dir.join("server.log"),
            port,
            child: None,
        })
    }

    /// The webhook URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/webhook", self.port)
    }

    /// Starts it and waits until it answers `/healthz`.
    pub async fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.bin)
            .args(["--config"])
            .arg(&self.config)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = reqwest::Client::new();
        while Instant::now() < deadline {
            if let Ok(r) = client
                .get(format!("http://127.0.0.1:{}/healthz", self.port))
                .send()
                .await
                && r.status().is_success()
            {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "the server exited at start ({status}); see {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!(
            "the server did not become healthy; see {}",
            self.log.display()
        )
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then waits; an unclean exit is an error.
    pub fn terminate(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()?;
            let status = c.wait()?;
            if !status.success() {
                bail!(
                    "the server exited with {status} on SIGTERM; see {}",
                    self.log.display()
                );
            }
        }
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
