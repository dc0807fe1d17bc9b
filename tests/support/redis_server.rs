//! A private `redis-server` per test: its own port and directory, killed when dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::certs::Certs;
use super::process::send_signal;

/// A private redis-server on a port of its own, in a directory of its own (a replica
/// writes the data it syncs there, and a server loads any `dump.rdb` in its directory at
/// start), killed by PID when dropped.
pub struct RedisServer {
    pub port: u16,
    /// The TLS port, for [`RedisServer::start_tls`].
    pub tls_port: Option<u16>,
    child: Child,
    client: redis::Client,
    pub dir: tempfile::TempDir,
}

/// What a redis-server is started with, besides its port and directory.
#[derive(Default)]
struct Launch<'a> {
    /// The server program; `redis-server` (from PATH) when `None`.
    program: Option<&'a str>,
    /// Runs the server (e.g. `valgrind --tool=callgrind …`) when not empty.
    wrapper: &'a [&'a str],
    extra: &'a [&'a str],
    /// Asks for a second (TLS) port with these arguments before the port.
    tls: Option<&'a [String]>,
    /// The directory to run in (kept across a restart); a new one when `None`.
    dir: Option<tempfile::TempDir>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> RedisServer {
        Self::launch(Launch {
            extra,
            ..Launch::default()
        })
    }

    /// Another redis-server program (another version's binary), with `extra`.
    pub fn start_program(program: &str, extra: &[&str]) -> RedisServer {
        Self::launch(Launch {
            program: Some(program),
            extra,
            ..Launch::default()
        })
    }

    /// A redis-server run by `wrapper` (e.g. `valgrind --tool=callgrind …`).
    pub fn start_under(wrapper: &[&str], extra: &[&str]) -> RedisServer {
        Self::launch(Launch {
            wrapper,
            extra,
            ..Launch::default()
        })
    }

    /// A redis-server with a plain port (for the harness) and a TLS port using the
    /// server certificate of `certs`; `client_auth` requires client certificates.
    pub fn start_tls(certs: &Certs, client_auth: bool) -> RedisServer {
        let tls: Vec<String> = [
            "--tls-cert-file",
            &certs.path("server.pem"),
            "--tls-key-file",
            &certs.path("server.key"),
            "--tls-ca-cert-file",
            &certs.path("ca.pem"),
            "--tls-auth-clients",
            if client_auth { "yes" } else { "no" },
        ]
        .map(str::to_owned)
        .to_vec();
        Self::launch(Launch {
            tls: Some(&tls),
            ..Launch::default()
        })
    }

    /// Stops this server (SIGTERM: it writes its append-only file) and starts a new one
    /// in the same directory with `extra`, on a port of its own (put a [`super::Proxy`]
    /// in front when the relay must find it at the old address).
    pub fn restart(mut self, extra: &[&str]) -> RedisServer {
        self.terminate();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        Self::launch(Launch {
            extra,
            dir: Some(dir),
            ..Launch::default()
        })
    }

    /// Starts the server on a free port; a port another process took in the meantime
    /// makes the server exit, and it is started again on another one.
    fn launch(mut launch: Launch) -> RedisServer {
        let dir = launch
            .dir
            .take()
            .unwrap_or_else(|| tempfile::tempdir().unwrap());
        for _attempt in 0..5 {
            let port = unused_port();
            let tls_port = launch.tls.map(|_| unused_port());
            let server = launch.program.unwrap_or("redis-server");
            let mut command = match launch.wrapper.split_first() {
                Some((program, args)) => {
                    let mut command = Command::new(program);
                    command.args(args.iter()).arg(server);
                    command
                }
                None => Command::new(server),
            };
            command
                .args(["--dir", dir.path().to_str().unwrap()])
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"]);
            if let (Some(args), Some(tls_port)) = (launch.tls, tls_port) {
                command
                    .args(["--tls-port", &tls_port.to_string()])
                    .args(args);
            }
            let child = command
                .args(launch.extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed (apt-get install redis-server)");
            let patience = Duration::from_secs(if launch.wrapper.is_empty() { 10 } else { 60 });
            match Self::answering(child, port, patience) {
                Ok((child, client)) => {
                    return RedisServer {
                        port,
                        tls_port,
                        child,
                        client,
                        dir,
                    };
                }
                Err(why) => eprintln!("redis-server on port {port}: {why}; trying another port"),
            }
        }
        panic!("redis-server did not start on any of 5 ports");
    }

    /// Waits until the server `child` answers on `port` as itself (another server on the
    /// same port would make every assertion meaningless).
    fn answering(
        mut child: Child,
        port: u16,
        patience: Duration,
    ) -> Result<(Child, redis::Client), String> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let deadline = Instant::now() + patience;
        let pid = child.id();
        loop {
            // Its own process id, and its data loaded (an append-only file takes a
            // moment; meanwhile commands are refused with LOADING).
            if let Ok(mut conn) = client.get_connection()
                && let Ok(info) = redis::cmd("INFO").query::<String>(&mut conn)
                && info.contains(&format!("process_id:{pid}\r\n"))
                && info.contains("loading:0\r\n")
                && redis::cmd("DBSIZE").query::<i64>(&mut conn).is_ok()
            {
                return Ok((child, client));
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited ({status}), its port was taken"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {patience:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `rediss://127.0.0.1:<tls port>`.
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port.expect("a TLS port"))
    }

    pub fn conn(&self) -> redis::Connection {
        self.client.get_connection().unwrap()
    }

    /// A connection, or why none could be made (a server mid-switchover closes them).
    pub fn try_conn(&self) -> redis::RedisResult<redis::Connection> {
        self.client.get_connection()
    }

    pub fn rpush(&self, key: &str, items: &[String]) {
        let mut conn = self.conn();
        for chunk in items.chunks(1000) {
            redis::cmd("RPUSH")
                .arg(key)
                .arg(chunk)
                .query::<i64>(&mut conn)
                .unwrap();
        }
    }

    pub fn rpush_bytes(&self, key: &str, item: &[u8]) {
        redis::cmd("RPUSH")
            .arg(key)
            .arg(item)
            .query::<i64>(&mut self.conn())
            .unwrap();
    }

    pub fn lrange(&self, key: &str) -> Vec<Vec<u8>> {
        redis::cmd("LRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .query(&mut self.conn())
            .unwrap()
    }

    pub fn llen(&self, key: &str) -> usize {
        redis::cmd("LLEN").arg(key).query(&mut self.conn()).unwrap()
    }

    /// Events in every list whose name starts with `prefix` (e.g. the retry lists,
    /// `{snowplow}:retry:`).
    pub fn llen_of_lists_named(&self, prefix: &str) -> usize {
        self.keys()
            .iter()
            .filter(|key| key.starts_with(prefix))
            .map(|key| self.llen(key))
            .sum()
    }

    /// Every key in the database.
    pub fn keys(&self) -> Vec<String> {
        redis::cmd("KEYS").arg("*").query(&mut self.conn()).unwrap()
    }

    /// A number from `INFO <section>` (0 when absent).
    pub fn info_number(&self, section: &str, field: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg(section)
            .query(&mut self.conn())
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// How many clients are blocked in a command (e.g. the relay's BLMOVE).
    pub fn blocked_clients(&self) -> usize {
        self.info_number("clients", "blocked_clients") as usize
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (e.g. `libc::SIGSTOP`, `libc::SIGCONT`) to the server.
    pub fn signal(&self, signal: i32) {
        send_signal(self.pid(), signal);
    }

    /// SIGTERM: Redis writes its append-only file and exits.
    pub fn terminate(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal(libc::SIGTERM);
        }
        let _ = self.child.wait();
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Every key and its value (DUMP, so any type compares), for "nothing changed".
    pub fn snapshot(&self) -> std::collections::BTreeMap<String, Vec<u8>> {
        let mut conn = self.conn();
        self.keys()
            .into_iter()
            .map(|key| {
                let dump: Vec<u8> = redis::cmd("DUMP").arg(&key).query(&mut conn).unwrap();
                (key, dump)
            })
            .collect()
    }

    /// Runs a command on the harness's own (default, unrestricted) connection.
    /// Adds the ACL user `name` with `password`, allowed every command on every key and
    /// channel.
    pub fn add_user(&self, name: &str, password: &str) {
        let password = format!(">{password}");
        self.cmd(&["ACL", "SETUSER", name, "on", &password, "~*", "&*", "+@all"]);
    }

    pub fn cmd(&self, args: &[&str]) -> redis::Value {
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command.query(&mut self.conn()).unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The relay's instance ids registered in `redis` (for the default list).
pub fn instances(redis: &RedisServer) -> Vec<String> {
    redis::cmd("SMEMBERS")
        .arg("{snowplow}:instances")
        .query(&mut redis.conn())
        .unwrap()
}

/// How many events the registered relays hold claimed (their in-flight lists).
pub fn held_by_relays(redis: &RedisServer) -> usize {
    instances(redis)
        .iter()
        .map(|id| redis.llen(&format!("{{snowplow}}:inflight:{id}")))
        .sum()
}

/// A port no socket of this host listens on right now, for a server that binds it
/// itself ([`RedisServer::launch`] starts again elsewhere if it was taken meanwhile).
pub fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
