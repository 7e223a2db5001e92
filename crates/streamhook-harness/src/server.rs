//! The harness's processes and readiness: [`Process`], any child it starts (killed when
//! dropped, stopped with SIGTERM within a deadline, its memory read from /proc);
//! [`ServerProcess`], the real `streamhook-server` binary from a generated config (started,
//! killed with SIGKILL, stopped with SIGTERM, started again); and [`wait_ready`], the one wait
//! until a port accepts connections or a path answers 2xx.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A free loopback port.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// How often to look, and for how long, while waiting for a process.
#[derive(Debug, Clone, Copy)]
pub struct Poll {
    /// The pause between two looks.
    pub every: Duration,
    /// When to give up.
    pub within: Duration,
}

/// A child process the harness started. Killed (and reaped) when dropped, so that no server
/// outlives a run that stopped on an error.
#[derive(Debug)]
pub struct Process {
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Process {
    /// Starts `cmd` as it is set up (its stdio included).
    pub fn spawn(cmd: &mut Command) -> Result<Process> {
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", cmd.get_program().to_string_lossy()))?;
        Ok(Process { child })
    }

    /// Starts `cmd` with its output going nowhere.
    pub fn spawn_quiet(cmd: &mut Command) -> Result<Process> {
        Process::spawn(cmd.stdout(Stdio::null()).stderr(Stdio::null()))
    }

    /// Waits until it exits (up to `within`).
    pub fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("the process did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status if it has exited (reaped), `None` while it runs.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// SIGKILL, and waits for it: no chance to flush anything.
    pub fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, then waits for it to exit, looking every `poll.every`; after `poll.within`
    /// it is killed and this is an error. Its exit status: the caller decides whether an
    /// unclean exit matters.
    pub fn terminate(mut self, poll: Poll) -> Result<ExitStatus> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        let deadline = Instant::now() + poll.within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(poll.every);
        }
        self.child.kill()?;
        bail!(
            "the process did not stop within {:?} of SIGTERM",
            poll.within
        )
    }

    fn status_kb(&self, key: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Peak resident memory so far, MiB (0 when /proc cannot tell).
    pub fn peak_rss_mib(&self) -> f64 {
        self.status_kb("VmHWM:") as f64 / 1024.0
    }

    /// Resident memory now, MiB (0 when /proc cannot tell).
    pub fn rss_mib(&self) -> f64 {
        self.status_kb("VmRSS:") as f64 / 1024.0
    }
}

/// A client for the servers' health and admin endpoints: a server that accepts and never
/// answers must not hang the harness (its waits have deadlines; each request has one too).
pub fn admin_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default()
}

/// What a ready process does.
#[derive(Debug, Clone, Copy)]
pub enum Probe<'a> {
    /// Accepts TCP connections on the port.
    Listening,
    /// Answers `GET <path>` with a 2xx.
    Get(&'a str),
}

/// Waits until `127.0.0.1:port` passes `probe`, looking every `poll.every` for at most
/// `poll.within`: how long it took. With `process`, fails as soon as that process exits.
pub async fn wait_ready(
    port: u16,
    probe: Probe<'_>,
    poll: Poll,
    mut process: Option<&mut Process>,
) -> Result<Duration> {
    let start = Instant::now();
    let http = match probe {
        Probe::Listening => None,
        Probe::Get(_) => Some(admin_client()),
    };
    while start.elapsed() < poll.within {
        let ready = match (probe, &http) {
            (Probe::Get(path), Some(http)) => http
                .get(format!("http://127.0.0.1:{port}{path}"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success()),
            _ => tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok(),
        };
        if ready {
            return Ok(start.elapsed());
        }
        if let Some(p) = process.as_deref_mut()
            && let Some(status) = p.exited()?
        {
            bail!("the process on port {port} exited before it was ready ({status})");
        }
        tokio::time::sleep(poll.every).await;
    }
    match probe {
        Probe::Listening => bail!("nothing listens on port {port} after {:?}", poll.within),
        Probe::Get(path) => bail!(
            "GET {path} on port {port} did not answer 2xx within {:?}",
            poll.within
        ),
    }
}

/// A server process and what it needs to restart.
#[derive(Debug)]
pub struct ServerProcess {
    bin: PathBuf,
    config: PathBuf,
    /// Where its stderr goes; `None`: nowhere (a measured server writes no log).
    log: Option<PathBuf>,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    /// A program (and its arguments) it runs under, such as `strace -o ...`.
    wrapper: Vec<OsString>,
    /// The webhook port.
    pub port: u16,
    process: Option<Process>,
}

impl ServerProcess {
    /// Writes `config` (TOML, without `listen`) into `dir` and prepares to run `bin` with it,
    /// its stderr appended to `server.log` in `dir`.
    pub fn new(bin: &Path, dir: &Path, config: &str) -> Result<ServerProcess> {
        let port = free_port()?;
        let path = dir.join("streamhook.toml");
        std::fs::write(&path, format!("listen = \"127.0.0.1:{port}\"\n{config}"))?;
        Ok(ServerProcess {
            bin: bin.to_owned(),
            config: path,
            log: Some(dir.join("server.log")),
            args: Vec::new(),
            envs: Vec::new(),
            wrapper: Vec::new(),
            port,
            process: None,
        })
    }

    /// The same server run under `wrapper` (a program and its arguments, the server's command
    /// line after them), not started.
    pub fn wrapped(&self, wrapper: Vec<OsString>) -> ServerProcess {
        ServerProcess {
            bin: self.bin.clone(),
            config: self.config.clone(),
            log: self.log.clone(),
            args: self.args.clone(),
            envs: self.envs.clone(),
            wrapper,
            port: self.port,
            process: None,
        }
    }

    /// Starts a process of it, waits until it answers `/healthz`, and hands it over.
    pub async fn spawn_started(&self) -> Result<Process> {
        let mut process = self.spawn()?;
        let poll = Poll {
            every: Duration::from_millis(20),
            within: Duration::from_secs(60),
        };
        wait_ready(self.port, Probe::Get("/healthz"), poll, Some(&mut process))
            .await
            .with_context(|| format!("the server did not become healthy; {}", self.see_log()))?;
        Ok(process)
    }

    /// Its stderr goes nowhere (no log written while it is measured).
    pub fn quiet(mut self) -> ServerProcess {
        self.log = None;
        self
    }

    /// One more command-line argument after `--config <file>`.
    pub fn arg(mut self, arg: impl Into<OsString>) -> ServerProcess {
        self.args.push(arg.into());
        self
    }

    /// One more environment variable.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> ServerProcess {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// The webhook URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/webhook", self.port)
    }

    /// The command that runs it (without its stdio): to run it under another program.
    pub fn command(&self) -> Command {
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(&self.bin);
                cmd
            }
            None => Command::new(&self.bin),
        };
        cmd.arg("--config").arg(&self.config).args(&self.args);
        cmd.envs(self.envs.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Starts a process of it and returns it, without waiting: stdout goes nowhere, stderr
    /// to the log (without colours), or nowhere when [`quiet`](Self::quiet).
    pub fn spawn(&self) -> Result<Process> {
        let mut cmd = self.command();
        cmd.stdout(Stdio::null());
        match &self.log {
            Some(log) => {
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)?;
                cmd.env("NO_COLOR", "1").stderr(log);
            }
            None => {
                cmd.stderr(Stdio::null());
            }
        }
        Process::spawn(&mut cmd)
    }

    fn see_log(&self) -> String {
        match &self.log {
            Some(log) => format!("see {}", log.display()),
            None => "it writes no log".to_owned(),
        }
    }

    /// Starts it and waits until it answers `/healthz`.
    pub async fn start(&mut self) -> Result<()> {
        let process = self.process.insert(self.spawn()?);
        let poll = Poll {
            every: Duration::from_millis(20),
            within: Duration::from_secs(60),
        };
        let ready = wait_ready(self.port, Probe::Get("/healthz"), poll, Some(process)).await;
        ready.with_context(|| format!("the server did not become healthy; {}", self.see_log()))?;
        Ok(())
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): a frozen process, as a paused VM or a stalled
    /// host makes it; its sockets stay open.
    pub fn freeze(&mut self, frozen: bool) -> Result<()> {
        if let Some(p) = &self.process {
            let pid = rustix::process::Pid::from_raw(p.id() as i32)
                .ok_or_else(|| anyhow::anyhow!("no pid"))?;
            let signal = if frozen {
                rustix::process::Signal::STOP
            } else {
                rustix::process::Signal::CONT
            };
            rustix::process::kill_process(pid, signal)?;
        }
        Ok(())
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(p) = self.process.take() {
            p.kill()?;
        }
        Ok(())
    }

    /// SIGTERM, then waits (up to 60 s); an unclean exit is an error.
    pub fn terminate(&mut self) -> Result<()> {
        if let Some(p) = self.process.take() {
            let poll = Poll {
                every: Duration::from_millis(20),
                within: Duration::from_secs(60),
            };
            let status = p
                .terminate(poll)
                .with_context(|| format!("stopping the server; {}", self.see_log()))?;
            if !status.success() {
                bail!(
                    "the server exited with {status} on SIGTERM; {}",
                    self.see_log()
                );
            }
        }
        Ok(())
    }
}
