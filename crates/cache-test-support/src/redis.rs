//! Throwaway `redis-server` processes for integration tests: a standalone
//! server, a primary with one replica, and a three-primary Cluster (with a
//! replica per primary if asked).
//!
//! Every server listens on a free loopback port, keeps its files in its own
//! temporary directory and is killed (and the directory removed) when its
//! handle is dropped, so tests run in parallel. When a test panics while a
//! server is alive, the tail of that server's log goes to stderr.
//!
//! ```no_run
//! use cache_test_support::redis::RedisServer;
//!
//! let server = RedisServer::start();
//! assert_eq!(server.cli(&["PING"]).trim(), "PONG");
//! println!("connect to {}", server.url());
//! ```
//!
//! The binaries `redis-server` and `redis-cli` must be on `PATH` (Debian:
//! `apt-get install -y redis-server`); without them the helpers panic with
//! that advice.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a server may take to accept connections before a test gives up.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(10);

/// One `redis-server` process on a loopback port, killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    extra_args: Vec<String>,
    stopped: bool,
}

impl RedisServer {
    /// Starts a standalone server on a free port.
    ///
    /// # Panics
    /// When `redis-server` is missing or does not come up (the panic message
    /// carries its log).
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments, for example
    /// `&["--requirepass", "secret"]`.
    pub fn start_with(extra_args: &[&str]) -> Self {
        Self::start_inner(extra_args, false)
    }

    fn start_inner(extra_args: &[&str], needs_bus_port: bool) -> Self {
        require_binaries();
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let mut last_log = String::new();
        for _attempt in 0..20 {
            let port = free_port(needs_bus_port);
            let dir = tempfile::Builder::new()
                .prefix("cache-redis-test-")
                .tempdir()
                .expect("create a temporary directory for redis-server");
            let mut server = RedisServer {
                child: None,
                port,
                dir,
                extra_args: extra_args.clone(),
                stopped: false,
            };
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(log) => {
                    let port_taken = log.contains("Address already in use");
                    last_log = log;
                    drop(server);
                    if !port_taken {
                        break;
                    }
                }
            }
        }
        panic!("redis-server did not start; its log:\n{last_log}");
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--protected-mode", "no"])
            .args(["--daemonize", "no"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command.spawn().map_err(|err| {
            format!(
                "could not run redis-server ({err}); install it: apt-get install -y redis-server"
            )
        })?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("exited with {status}\n{}", self.log()));
            }
            if ping(self.port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not answering PING after {START_TIMEOUT:?}\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// The port the server listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port` of the server.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A `redis://` URL for the server.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The process id, while the server runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs `redis-cli` against the server and returns its stdout.
    ///
    /// # Panics
    /// When `redis-cli` cannot be run.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
    }

    /// The keys that hold a value, sorted: every key but cache-redis's
    /// removal markers (which a removal leaves in a value's place).
    pub fn values(&self) -> Vec<String> {
        let reply = self.cli(&["EVAL", LIVE_KEYS, "0"]);
        let mut keys: Vec<String> = reply
            .lines()
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect();
        keys.sort();
        keys
    }

    /// Kills the server with SIGKILL (no shutdown, no goodbye to clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.stopped {
                signal(child.id(), "CONT");
                self.stopped = false;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server with SIGSTOP: connections stay open, nothing answers.
    pub fn pause(&mut self) {
        if let Some(pid) = self.pid() {
            signal(pid, "STOP");
            self.stopped = true;
        }
    }

    /// Thaws a server frozen by [`pause`](Self::pause) (SIGCONT).
    pub fn resume(&mut self) {
        if let Some(pid) = self.pid() {
            signal(pid, "CONT");
            self.stopped = false;
        }
    }

    /// Kills the server (if it runs) and starts it again on the same port,
    /// with the same directory and arguments. Data is not kept (no persistence).
    ///
    /// # Panics
    /// When the server does not come back.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(log) if log.contains("Address already in use") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(log) => panic!("redis-server did not restart:\n{log}"),
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "---- redis-server on port {} (last {} log lines) ----",
                self.port,
                tail.len()
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        self.kill();
        // `TempDir` removes the directory when it drops after this.
    }
}

/// A primary and one replica replicating from it.
#[derive(Debug)]
pub struct ReplicatedRedis {
    /// The primary; write here.
    pub primary: RedisServer,
    /// The replica, in sync with the primary when `start` returns.
    pub replica: RedisServer,
}

impl ReplicatedRedis {
    /// Starts a primary and a replica and waits until the replica's link is up.
    ///
    /// # Panics
    /// When either server does not start or the replica does not sync.
    pub fn start() -> Self {
        let primary = RedisServer::start_with(&[
            "--repl-diskless-sync",
            "yes",
            "--repl-diskless-sync-delay",
            "0",
        ]);
        let replica = RedisServer::start_with(&[
            "--replicaof",
            "127.0.0.1",
            &primary.port().to_string(),
            "--repl-diskless-load",
            "swapdb",
        ]);
        let started = Instant::now();
        while !replica
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up")
        {
            assert!(
                started.elapsed() < START_TIMEOUT,
                "the replica did not sync within {START_TIMEOUT:?}:\n{}",
                replica.log()
            );
            std::thread::sleep(POLL);
        }
        ReplicatedRedis { primary, replica }
    }

    /// Waits until the replica has applied everything the primary has
    /// written so far (its replication offset caught up), at most `timeout`.
    /// Returns whether it did.
    pub fn wait_for_replica(&self, timeout: Duration) -> bool {
        let offset = |server: &RedisServer, field: &str| -> Option<u64> {
            server
                .cli(&["INFO", "replication"])
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|value| value.trim().parse().ok())
        };
        let target = offset(&self.primary, "master_repl_offset:");
        let deadline = Instant::now() + timeout;
        loop {
            let applied = offset(&self.replica, "slave_repl_offset:");
            if let (Some(target), Some(applied)) = (target, applied)
                && applied >= target
            {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(POLL);
        }
    }
}

/// A Redis Cluster of three primaries, all slots assigned, without replicas
/// ([`start`](Self::start)) or with one per primary
/// ([`start_replicated`](Self::start_replicated)).
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers, joins them with
    /// `redis-cli --cluster create` and waits until every node reports
    /// `cluster_state:ok`.
    ///
    /// # Panics
    /// When the cluster does not form.
    pub fn start() -> Self {
        Self::start_inner(0, "5000", &[])
    }

    /// Like [`start`](Self::start), with extra `redis-server` arguments for
    /// every node, for example `&["--rename-command", "SPUBLISH", ""]` to
    /// play a server without a command.
    pub fn start_with(extra_args: &[&str]) -> Self {
        Self::start_inner(0, "5000", extra_args)
    }

    /// Starts three primaries with one replica each (six servers, the
    /// primaries first in [`nodes`](Self::nodes)), with a
    /// `cluster-node-timeout` of 2 s so that a killed primary's replica
    /// takes over within a few seconds, and waits until every node reports
    /// `cluster_state:ok`, every replica is in sync and every node knows
    /// all six.
    ///
    /// # Panics
    /// When the cluster does not form.
    pub fn start_replicated() -> Self {
        Self::start_inner(1, "2000", &[])
    }

    fn start_inner(replicas: usize, node_timeout: &str, extra_args: &[&str]) -> Self {
        let count = 3 * (1 + replicas);
        let nodes: Vec<RedisServer> = (0..count)
            .map(|_| {
                let mut args = vec![
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    node_timeout,
                    "--repl-diskless-sync",
                    "yes",
                    "--repl-diskless-sync-delay",
                    "0",
                ];
                args.extend_from_slice(extra_args);
                RedisServer::start_inner(&args, true)
            })
            .collect();
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(nodes.iter().map(RedisServer::addr));
        args.extend([
            "--cluster-replicas".into(),
            replicas.to_string(),
            "--cluster-yes".into(),
        ]);
        let output = Command::new("redis-cli")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create (apt-get install -y redis-server)");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("All 16384 slots covered"),
            "redis-cli --cluster create failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let started = Instant::now();
        let ready = |node: &RedisServer| {
            if !node.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                return false;
            }
            let known = node.cli(&["CLUSTER", "NODES"]);
            let settled = known.lines().filter(|line| !line.is_empty()).count() == count
                && !known.contains("handshake")
                && !known.contains("fail");
            let replication = node.cli(&["INFO", "replication"]);
            settled
                && (replication.contains("role:master")
                    || replication.contains("master_link_status:up"))
        };
        for node in &nodes {
            while !ready(node) {
                assert!(
                    started.elapsed() < START_TIMEOUT,
                    "cluster not ok within {START_TIMEOUT:?}:\n{}",
                    node.log()
                );
                std::thread::sleep(POLL);
            }
        }
        RedisCluster { nodes }
    }

    /// The nodes, mutable: to [`kill`](RedisServer::kill),
    /// [`pause`](RedisServer::pause) or restart one.
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// The nodes, in the order they were started.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// One `redis://` URL per node, to seed a cluster client.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The number of keys holding a value on all nodes together (see
    /// [`RedisServer::values`]).
    pub fn total_values(&self) -> u64 {
        self.nodes
            .iter()
            .map(|node| node.values().len() as u64)
            .sum()
    }

    /// The number of keys held by all nodes together (`DBSIZE` summed).
    pub fn total_keys(&self) -> u64 {
        self.nodes
            .iter()
            .map(|node| node.cli(&["DBSIZE"]).trim().parse::<u64>().unwrap_or(0))
            .sum()
    }
}

/// Lists the keys that are not cache-redis removal markers (format 2
/// entries with flag bit 1: magic 0xCA, version 2, flags).
const LIVE_KEYS: &str = r"
local live = {}
for _, key in ipairs(redis.call('KEYS', '*')) do
  local ok, head = pcall(redis.call, 'GETRANGE', key, 0, 2)
  local marker = ok and #head == 3 and string.byte(head, 1) == 202
    and string.byte(head, 2) == 2 and math.floor(string.byte(head, 3) / 2) % 2 == 1
  if not marker then table.insert(live, key) end
end
return live
";

/// Runs `redis-cli -p <port> <args>` and returns its stdout.
///
/// # Panics
/// When `redis-cli` is missing.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli (install it: apt-get install -y redis-server)");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Sends a signal (`"KILL"`, `"STOP"`, `"CONT"`, ...) to a process with `kill`.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
    if let Err(err) = status {
        eprintln!("kill -{name} {pid} failed: {err}");
    }
}

fn require_binaries() {
    for binary in ["redis-server", "redis-cli"] {
        let found = Command::new(binary)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        assert!(
            found,
            "`{binary}` is not on PATH; the Redis tests need a real server. \
             Install it with: apt-get install -y redis-server"
        );
    }
}

/// Whether a server on `port` answers `PING`.
fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    // `+PONG`, or `-NOAUTH ...` from a server that wants a password: either
    // way it is up.
    let mut reply = [0u8; 1];
    stream.read_exact(&mut reply).is_ok() && matches!(reply[0], b'+' | b'-')
}

/// A port in 15000..30000 that is free now, and whose cluster bus port
/// (+10000) is free too when `needs_bus_port`. The range stays below
/// Linux's ephemeral ports so outgoing connections rarely take it; a server
/// that still loses the race is restarted on another port.
fn free_port(needs_bus_port: bool) -> u16 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        hasher.write_u32(std::process::id());
        let port = 15000 + (hasher.finish() % 15000) as u16;
        let free = |port: u16| TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free(port) && (!needs_bus_port || free(port + 10000)) {
            return port;
        }
    }
}
