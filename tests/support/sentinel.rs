//! A master, a replica and three sentinels on loopback, each a private process: the
//! sentinels are `redis-server FILE --sentinel`, the same binary as the servers. Short
//! `down-after-milliseconds` and `failover-timeout` make failovers take a second or two.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis_server::{RedisServer, unused_port};
use super::wait_until;

/// The master's name in the sentinels' configuration.
pub const MASTER: &str = "mymaster";

/// One sentinel process.
pub struct Sentinel {
    pub port: u16,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    fn start(master_port: u16) -> Sentinel {
        let dir = tempfile::tempdir().unwrap();
        for _attempt in 0..5 {
            let port = unused_port();
            let file = dir.path().join("sentinel.conf");
            std::fs::write(
                &file,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {MASTER} 1000\n\
                     sentinel failover-timeout {MASTER} 4000\n\
                     sentinel parallel-syncs {MASTER} 1\n",
                    dir.path().display()
                ),
            )
            .unwrap();
            let mut child = Command::new("redis-server")
                .arg(&file)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed (apt-get install redis-server)");
            let deadline = Instant::now() + Duration::from_secs(10);
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
            loop {
                if let Ok(mut conn) = client.get_connection()
                    && redis::cmd("SENTINEL")
                        .arg("get-master-addr-by-name")
                        .arg(MASTER)
                        .query::<Option<(String, u16)>>(&mut conn)
                        .is_ok_and(|a| a.is_some())
                {
                    return Sentinel {
                        port,
                        child: Some(child),
                        _dir: dir,
                    };
                }
                if child.try_wait().ok().flatten().is_some() || Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("a sentinel did not start on any of 5 ports");
    }

    /// Kills it (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn conn(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.port))?.get_connection()
    }

    /// Where it says the master is.
    pub fn master_port(&self) -> Option<u16> {
        let mut conn = self.conn().ok()?;
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(MASTER)
            .query::<Option<(String, u16)>>(&mut conn)
            .ok()
            .flatten()
            .map(|(_, port)| port)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Two servers (a master and its replica) and three sentinels watching them.
pub struct SentinelSet {
    pub servers: Vec<Option<RedisServer>>,
    pub sentinels: Vec<Sentinel>,
}

impl SentinelSet {
    pub async fn start() -> SentinelSet {
        let master = RedisServer::start();
        let replica =
            RedisServer::start_with(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
        let sentinels = (0..3).map(|_| Sentinel::start(master.port)).collect();
        let set = SentinelSet {
            servers: vec![Some(master), Some(replica)],
            sentinels,
        };
        set.wait_synced().await;
        // Every sentinel knows the replica (and the others) before any fault.
        wait_until("the sentinels know the replica", 20, async || {
            set.sentinels.iter().all(|s| {
                s.conn()
                    .and_then(|mut c| {
                        redis::cmd("SENTINEL")
                            .arg("replicas")
                            .arg(MASTER)
                            .query::<Vec<redis::Value>>(&mut c)
                    })
                    .is_ok_and(|r| !r.is_empty())
            })
        })
        .await;
        set
    }

    /// `host:port,…` of every sentinel, for `redis.sentinels`.
    pub fn endpoints(&self) -> String {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The master's port, as a live sentinel says.
    pub fn master_port(&self) -> u16 {
        self.sentinels
            .iter()
            .find_map(Sentinel::master_port)
            .expect("a sentinel answers")
    }

    /// The server on `port`.
    pub fn server(&self, port: u16) -> &RedisServer {
        self.servers
            .iter()
            .flatten()
            .find(|s| s.port == port)
            .expect("one of the set's servers")
    }

    /// The master now.
    pub fn master(&self) -> &RedisServer {
        self.server(self.master_port())
    }

    /// Waits until every live replica is linked to the master and has its writes.
    pub async fn wait_synced(&self) {
        wait_until("the replicas in sync with the master", 30, async || {
            let master_port = self.master_port();
            let Some(master) = self
                .servers
                .iter()
                .flatten()
                .find(|s| s.port == master_port)
            else {
                return false;
            };
            // A server that is switching roles may close the connection while it is
            // made: not in sync yet, ask again.
            let info = |server: &RedisServer| -> String {
                server
                    .try_conn()
                    .and_then(|mut conn| redis::cmd("INFO").arg("replication").query(&mut conn))
                    .unwrap_or_default()
            };
            let field = |info: &str, name: &str| -> Option<String> {
                info.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                    .map(|v| v.trim().to_owned())
            };
            let master_info = info(master);
            if field(&master_info, "role").as_deref() != Some("master") {
                return false;
            }
            let offset = field(&master_info, "master_repl_offset");
            self.servers
                .iter()
                .flatten()
                .filter(|s| s.port != master_port)
                .all(|replica| {
                    let info = info(replica);
                    field(&info, "master_link_status").as_deref() == Some("up")
                        && field(&info, "master_port") == Some(master_port.to_string())
                        && field(&info, "slave_repl_offset") == offset
                })
        })
        .await;
    }

    /// Pushes `events` onto `list` at the master, and waits until its replica has them
    /// (`WAIT 1`), so that a failover cannot lose them on the Redis side.
    pub fn push(&self, list: &str, events: &[String]) {
        let master = self.master();
        let mut conn = master.conn();
        redis::cmd("RPUSH")
            .arg(list)
            .arg(events)
            .query::<i64>(&mut conn)
            .unwrap();
        let copies: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(5_000)
            .query(&mut conn)
            .unwrap();
        assert_eq!(copies, 1, "the replica has the events");
    }

    /// Pushes `events` onto `list` at the server on `port` (the master a failover just
    /// made), without waiting for the replica (no fault follows before the replicas are
    /// waited for).
    pub fn push_now(&self, port: u16, list: &str, events: &[String]) {
        redis::cmd("RPUSH")
            .arg(list)
            .arg(events)
            .query::<i64>(&mut self.server(port).conn())
            .unwrap();
    }

    /// Asks a live sentinel for a failover (a switchover: the master is healthy).
    pub fn failover(&self) {
        let sentinel = self
            .sentinels
            .iter()
            .find(|s| s.child.is_some())
            .expect("a live sentinel");
        let reply: String = redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(MASTER)
            .query(&mut sentinel.conn().unwrap())
            .unwrap();
        assert_eq!(reply, "OK");
    }

    /// Waits until the sentinels name another master than `from`: the new master's port
    /// and when the first sentinel named it (the `+switch-master` moment, within 20 ms).
    /// Returns once it takes writes.
    pub async fn wait_switched(&self, from: u16) -> (u16, Instant) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let live = || self.sentinels.iter().filter(|s| s.child.is_some());
        let (port, at) = loop {
            if let Some(port) = live()
                .find_map(Sentinel::master_port)
                .filter(|p| *p != from)
            {
                break (port, Instant::now());
            }
            assert!(Instant::now() < deadline, "no failover within 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        wait_until("the new master takes writes", 30, async || {
            redis::cmd("INFO")
                .arg("replication")
                .query::<String>(&mut self.server(port).conn())
                .is_ok_and(|info| info.contains("role:master"))
        })
        .await;
        (port, at)
    }

    /// Kills the server on `port` (SIGKILL) and forgets it.
    pub fn kill_server(&mut self, port: u16) {
        let slot = self
            .servers
            .iter_mut()
            .find(|s| s.as_ref().is_some_and(|s| s.port == port))
            .expect("one of the set's servers");
        if let Some(mut server) = slot.take() {
            server.kill();
        }
    }
}
