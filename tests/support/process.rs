//! The relay binary as an operator runs it: a long-running [`RelayProcess`] whose
//! output is drained on threads as it comes (a pipe read only at exit can fill up and
//! block the child), short-lived subcommands through [`run_bin`], signals through
//! kill(2), and a process's peak memory.

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test; `RELAY_BIN` runs the process tests against another build (a
/// release binary, or an older one to show a test fails there).
pub fn bin() -> String {
    std::env::var("RELAY_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_snowplow-relay").to_owned())
}

/// The binary, with the developer's own `SNOWPLOW_RELAY_*` and `RUST_LOG` variables
/// kept out.
pub fn bin_command() -> Command {
    program_command(&bin())
}

/// `program` (another build of the relay), with the developer's own `SNOWPLOW_RELAY_*`
/// and `RUST_LOG` variables kept out.
pub fn program_command(program: &str) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars() {
        if name.starts_with("SNOWPLOW_RELAY_") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    command
}

/// Runs the binary with `args` and `env` to its end (a subcommand such as `check`,
/// `dead-letter` or `track`): its output, both streams captured.
pub fn run_bin(args: &[&str], env: &[(&str, &str)]) -> Output {
    bin_command()
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("the relay binary runs")
}

/// Sends `signal` to process `pid`.
pub fn send_signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a process id of ours.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0, "kill {pid}");
}

/// A process's peak resident memory so far (VmHWM), in bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// How a process ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    /// Everything it wrote to stderr (the log).
    pub log: String,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// From the call to [`RelayProcess::finish`] (usually right after a signal) to the
    /// exit.
    pub took: Duration,
}

impl Finished {
    /// The exit status and the log.
    pub fn parts(self) -> (ExitStatus, String) {
        (self.status, self.log)
    }
}

/// A running relay binary (any subcommand), killed when dropped.
pub struct RelayProcess {
    pub child: Child,
    stderr: Arc<Mutex<Vec<u8>>>,
    stdout: Arc<Mutex<Vec<u8>>>,
}

impl RelayProcess {
    /// [`RelayProcess::start`] between a test's Redis and collector.
    pub fn between(
        redis: &super::RedisServer,
        collector: &super::Collector,
        env: &[(&str, &str)],
    ) -> RelayProcess {
        Self::start(&redis.url(), &collector.url(), env)
    }

    /// [`RelayProcess::between`] with the admin listener on a free port: the relay and
    /// the address it bound.
    pub async fn with_admin(
        redis: &super::RedisServer,
        collector: &super::Collector,
    ) -> (RelayProcess, SocketAddr) {
        let relay = Self::between(
            redis,
            collector,
            &[("SNOWPLOW_RELAY_ADMIN__LISTEN", "127.0.0.1:0")],
        );
        let addr = relay.admin_addr().await;
        (relay, addr)
    }

    /// `snowplow-relay --redis-url … --collector …` with fast collector retries.
    pub fn start(redis_url: &str, collector_url: &str, env: &[(&str, &str)]) -> RelayProcess {
        Self::start_with(
            &["--redis-url", redis_url, "--collector", collector_url],
            env,
        )
    }

    /// [`RelayProcess::start`] with settings named by their dotted keys
    /// (`("redis.lease_ttl_ms", "3000")`), passed as `SNOWPLOW_RELAY_<SECTION>__<KEY>`.
    pub fn start_with_settings(
        redis_url: &str,
        collector_url: &str,
        settings: &[(&str, &str)],
    ) -> RelayProcess {
        let env: Vec<(String, &str)> = settings
            .iter()
            .map(|(key, value)| {
                let name = key.to_ascii_uppercase().replacen('.', "__", 1);
                (format!("SNOWPLOW_RELAY_{name}"), *value)
            })
            .collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        Self::start(redis_url, collector_url, &env)
    }

    /// The binary with these arguments, fast collector retries and `env`.
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> RelayProcess {
        Self::start_program(&bin(), args, env)
    }

    /// [`RelayProcess::start_with`] for another build of the relay.
    pub fn start_program(program: &str, args: &[&str], env: &[(&str, &str)]) -> RelayProcess {
        let mut command = program_command(program);
        command
            .args(args)
            .env("SNOWPLOW_RELAY_COLLECTOR__RETRY_INITIAL_BACKOFF_MS", "20")
            .env("SNOWPLOW_RELAY_COLLECTOR__RETRY_MAX_BACKOFF_MS", "200")
            .envs(env.iter().copied());
        Self::spawn(command)
    }

    /// Spawns `command` (stdin closed), draining its output as it comes.
    pub fn spawn(mut command: Command) -> RelayProcess {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the relay binary runs");
        let stderr = drain(child.stderr.take().unwrap());
        let stdout = drain(child.stdout.take().unwrap());
        RelayProcess {
            child,
            stderr,
            stdout,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it logged (stderr) so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// What it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// Waits until a log line contains `needle`; returns that line. Panics with the
    /// log after `timeout`.
    pub async fn log_line(&self, needle: &str, timeout: Duration) -> String {
        self.nth_log_line(needle, 0, timeout).await
    }

    /// How many log lines contain `needle` so far.
    pub fn count_log_lines(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits until `n + 1` log lines contain `needle`; returns the last of them.
    pub async fn nth_log_line(&self, needle: &str, n: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if let Some(line) = log.lines().filter(|l| l.contains(needle)).nth(n) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?} within {timeout:?}:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The admin listener's address, from its start-up log line (run it with
    /// `--admin-listen 127.0.0.1:0`: the port is bound before anyone is told).
    pub async fn admin_addr(&self) -> SocketAddr {
        self.listening_addr("admin listener").await
    }

    /// The `addr=` of the first log line containing `needle` (a listener's start-up
    /// line), once it is logged.
    pub async fn listening_addr(&self, needle: &str) -> SocketAddr {
        let line = self.log_line(needle, Duration::from_secs(20)).await;
        let addr = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("addr="))
            .unwrap_or_else(|| panic!("no addr= in {line}"));
        addr.trim_matches('"').parse().unwrap()
    }

    pub fn signal(&self, signal: i32) {
        send_signal(self.pid(), signal);
    }

    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the exit (at most `limit`, then kills it and panics with its log).
    pub async fn finish(mut self, limit: Duration) -> Finished {
        let asked = Instant::now();
        let deadline = asked + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                self.kill9();
                panic!("the process did not exit within {limit:?}:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let took = asked.elapsed();
        // The pipes close at exit; the threads have read everything once they see EOF.
        let complete = Instant::now() + Duration::from_secs(5);
        while (Arc::strong_count(&self.stderr) > 1 || Arc::strong_count(&self.stdout) > 1)
            && Instant::now() < complete
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Finished {
            status,
            log: self.log(),
            stdout: self.stdout(),
            took,
        }
    }

    /// SIGTERM; the relay must exit 0 within 30 s. Returns its log.
    pub async fn stop_cleanly(self) -> String {
        let finished = self.stop(Duration::from_secs(30)).await;
        assert_eq!(finished.status.code(), Some(0), "{}", finished.log);
        finished.log
    }

    /// SIGTERM, then [`RelayProcess::finish`].
    pub async fn stop(self, limit: Duration) -> Finished {
        self.terminate();
        self.finish(limit).await
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Reads `stream` to its end on a thread of its own, into the returned buffer (the
/// thread drops its handle at EOF).
fn drain(mut stream: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let sink = buffer.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = stream.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buffer
}

/// This machine's host name, as the relay reads it (its instance ids and connection
/// names start with it).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}
