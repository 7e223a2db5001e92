//! Test support shared by the test suites and the fault runs: real `nats-server` processes on
//! loopback, one node or a cluster, killed with SIGKILL and restarted from their stores; and
//! [`gcore::FakeGcore`], a stand-in for Gcore's Streaming API built from its published spec.
//!
//! The server is found, in order: `STREAMHOOK_NATS_SERVER`; the pinned copy `cargo xtask
//! tools` installs into `.tools/`; `nats-server` on `PATH` when it is 2.11 or newer (Debian's
//! 2.9 is refused: it accepts concurrent compare-and-set publishes). When none is found a test
//! calls [`nats_server_or_skip`], which skips with a reason, or fails when `CI` is set.
//!
//! Each server runs under a small shell that SIGKILLs it when this process lets go of the
//! shell's stdin, so no server outlives the tests, even a server held in a `static`.

#![allow(clippy::print_stderr)] // a skipped test says why on stderr

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod gcore;

/// The oldest server the tests accept (the replicated journal needs 2.11).
pub const MIN_VERSION: (u64, u64) = (2, 11);

/// The nats-server binary to use, or why there is none.
pub fn nats_server() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("STREAMHOOK_NATS_SERVER") {
        let path = PathBuf::from(path);
        return check(&path).map(|()| path);
    }
    let pinned = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.tools")
        .read_dir()
        .ok()
        .and_then(|dirs| {
            dirs.filter_map(|d| d.ok().map(|d| d.path().join("nats-server")))
                .filter(|p| p.is_file())
                .max()
        });
    if let Some(path) = pinned {
        return check(&path).map(|()| path);
    }
    let on_path = PathBuf::from("nats-server");
    check(&on_path).map(|()| on_path).map_err(|e| {
        format!("{e}; run `cargo xtask tools` (or `cargo xtask test`) to install the pinned one")
    })
}

fn check(path: &Path) -> Result<(), String> {
    let out = Command::new(path)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or("")
        .trim_start_matches('v');
    let mut parts = version.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < MIN_VERSION {
        return Err(format!(
            "{} is nats-server {version}; the tests need {}.{} or newer",
            path.display(),
            MIN_VERSION.0,
            MIN_VERSION.1
        ));
    }
    Ok(())
}

/// The server binary, or `None` after printing why the calling test is skipped. With `CI`
/// set, a missing server fails the test instead.
pub fn nats_server_or_skip(test: &str) -> Option<PathBuf> {
    match nats_server() {
        Ok(path) => Some(path),
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("{test}: no usable nats-server with CI set: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            None
        }
    }
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    // Never the same port twice in one process: tests run side by side, and a port handed
    // out but not yet bound could otherwise be handed out again.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// One node: its ports, store and process.
#[derive(Debug)]
pub struct Node {
    name: String,
    port: u16,
    cluster_port: u16,
    routes: Vec<u16>,
    store: PathBuf,
    binary: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl Node {
    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    fn start(&mut self) {
        // A lifeline: a shell holds the server and SIGKILLs it when its stdin (a pipe from
        // this process) closes: on `kill`, on drop, and when this process dies however it
        // dies, so no server outlives the tests.
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(
                "\"$0\" \"$@\" </dev/null >/dev/null 2>&1 & pid=$!; \
                 read -r what; kill -9 \"$pid\" 2>/dev/null; wait \"$pid\" 2>/dev/null; \
                 [ \"$what\" = keep ] || { rm -rf \"$STREAMHOOK_NATS_STORE\" \"$STREAMHOOK_NATS_STORE.log\"; \
                 rmdir \"${STREAMHOOK_NATS_STORE%/*}\" 2>/dev/null; }; exit 0",
            )
            .arg(&self.binary);
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js"])
            .arg("-sd")
            .arg(&self.store)
            .args(["-n", &self.name])
            .arg("-l")
            .arg(&self.log)
            .arg("-P")
            .arg(self.pid_file())
            .env("STREAMHOOK_NATS_STORE", &self.store)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if !self.routes.is_empty() {
            let routes: Vec<String> = self
                .routes
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            cmd.args(["--cluster_name", "streamhook"])
                .args([
                    "--cluster",
                    &format!("nats://127.0.0.1:{}", self.cluster_port),
                ])
                .args(["--routes", &routes.join(",")]);
        }
        self.child = Some(cmd.spawn().expect("nats-server starts"));
    }

    /// SIGKILL (no clean shutdown), then wait for the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Closing the lifeline makes the shell SIGKILL the server and wait for it;
            // "keep" keeps its store for a restart. A lifeline closed without it (this
            // process died) removes the store too.
            if let Some(mut stdin) = child.stdin.take() {
                use std::io::Write as _;
                let _ = stdin.write_all(b"keep\n");
            }
            let _ = child.wait();
        }
    }

    /// Whether its process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn pid_file(&self) -> PathBuf {
        self.store.with_extension("pid")
    }

    /// Sends the server process a signal (`STOP` pauses it: connections stay open and
    /// nothing is answered, as a blackholed or frozen server; `CONT` resumes it).
    pub fn signal(&self, signal: &str) {
        let pid = std::fs::read_to_string(self.pid_file()).expect("the server's pid file");
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.trim())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} {}", pid.trim());
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One node or a cluster of nodes on loopback, each with its own store in a temporary folder
/// removed on drop (after the processes are killed).
#[derive(Debug)]
pub struct Nats {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Nats {
    /// One JetStream node, up and accepting connections.
    pub fn single(binary: &Path) -> Nats {
        Nats::start(binary, 1)
    }

    /// A cluster of `n` JetStream nodes (n >= 3 for replicas 3), each accepting connections
    /// (JetStream's meta leader may take another second: clients retry).
    pub fn cluster(binary: &Path, n: usize) -> Nats {
        Nats::start(binary, n)
    }

    fn start(binary: &Path, n: usize) -> Nats {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let mut nodes: Vec<Node> = (0..n)
            .map(|i| Node {
                name: format!("n{}", i + 1),
                port: ports[i].0,
                cluster_port: ports[i].1,
                routes: if n > 1 {
                    ports.iter().map(|p| p.1).collect()
                } else {
                    Vec::new()
                },
                store: dir.path().join(format!("n{}", i + 1)),
                binary: binary.to_owned(),
                child: None,
                log: dir.path().join(format!("n{}.log", i + 1)),
            })
            .collect();
        for node in &mut nodes {
            node.start();
        }
        let nats = Nats { nodes, _dir: dir };
        for i in 0..n {
            nats.wait_ready(i);
        }
        nats
    }

    /// Waits until node `i` accepts connections (at most 20 s, then panics with its log).
    pub fn wait_ready(&self, i: usize) {
        let node = &self.nodes[i];
        let addr = SocketAddr::from(([127, 0, 0, 1], node.port));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(&node.log).unwrap_or_default();
                panic!("nats-server {} did not start; its log:\n{log}", node.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every node's URL, comma-separated (what `--nats` takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(Node::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The URLs as a list.
    pub fn url_list(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// Node `i`.
    pub fn node(&mut self, i: usize) -> &mut Node {
        &mut self.nodes[i]
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never true: a cluster has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// SIGKILL node `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Pauses node `i` (SIGSTOP): its connections stay open, nothing is answered.
    pub fn pause(&mut self, i: usize) {
        self.nodes[i].signal("STOP");
    }

    /// Resumes a paused node `i` (SIGCONT).
    pub fn resume(&mut self, i: usize) {
        self.nodes[i].signal("CONT");
    }

    /// Start node `i` again from its store and wait until it accepts connections.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].kill();
        self.nodes[i].start();
        self.wait_ready(i);
    }
}
