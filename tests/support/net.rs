//! Network stand-ins: a TCP proxy that can freeze its connections or move to another
//! target, and a port that is bound but answers nothing.

use std::sync::{Arc, Mutex};

/// A TCP proxy on 127.0.0.1 in front of a Redis (or anything): it can stop forwarding
/// on the connections it holds (they stay open and answer nothing, as a frozen peer or a
/// dead network path would) while new connections pass, and it can send new connections
/// to another target (an address moved to a new master).
#[derive(Clone)]
pub struct Proxy {
    pub port: u16,
    target: Arc<Mutex<Option<u16>>>,
    /// Bumped by `freeze_existing`: a connection born in an older generation forwards
    /// nothing from then on.
    generation: Arc<std::sync::atomic::AtomicU64>,
    /// Connections accepted so far.
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    /// While set, a new connection is accepted and then answers nothing (a network
    /// partition: connects hang, nothing gets through).
    partitioned: Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    /// A proxy in front of 127.0.0.1:`target_port`.
    pub async fn start(target_port: u16) -> Proxy {
        Self::start_to(Some(target_port)).await
    }

    /// A proxy with nothing behind it yet: it accepts connections and closes them at
    /// once until [`Proxy::retarget`] names a target (a server that appears later at an
    /// address the relay already has).
    pub async fn start_unrouted() -> Proxy {
        Self::start_to(None).await
    }

    async fn start_to(target_port: Option<u16>) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy {
            port: listener.local_addr().unwrap().port(),
            target: Arc::new(Mutex::new(target_port)),
            generation: Arc::default(),
            accepted: Arc::default(),
            partitioned: Arc::default(),
        };
        let state = proxy.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                state
                    .accepted
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if state.partitioned.load(std::sync::atomic::Ordering::SeqCst) {
                    tokio::spawn(async move {
                        let _held = inbound;
                        std::future::pending::<()>().await;
                    });
                    continue;
                }
                let Some(target) = *state.target.lock().unwrap() else {
                    continue; // nothing behind: the connection closes as it drops
                };
                let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                else {
                    continue;
                };
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                tokio::spawn(state.clone().forward(in_read, out_write));
                tokio::spawn(state.clone().forward(out_read, in_write));
            }
        });
        proxy
    }

    /// Copies `from` to `to` until either closes, or forever nothing once frozen.
    async fn forward(
        self,
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
    ) {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let born = self.generation.load(Ordering::SeqCst);
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if self.generation.load(Ordering::SeqCst) != born {
                // Frozen: hold the connection open and forward nothing, ever.
                let _keep = (from, to);
                std::future::pending::<()>().await;
                return;
            }
            if to.write_all(&buffer[..n]).await.is_err() {
                return;
            }
        }
    }

    /// How many connections it accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// From now on, the connections open so far forward nothing (they stay open).
    pub fn freeze_existing(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// A network partition: the connections open so far forward nothing from now on,
    /// and new ones are accepted and answer nothing, until [`Proxy::heal`].
    pub fn partition(&self) {
        self.partitioned
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.freeze_existing();
    }

    /// The partition ends: new connections pass again (those frozen stay frozen).
    pub fn heal(&self) {
        self.partitioned
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// New connections are closed at once from now on (the server behind is gone).
    pub fn unroute(&self) {
        *self.target.lock().unwrap() = None;
    }

    /// New connections go to `port` from now on.
    pub fn retarget(&self, port: u16) {
        *self.target.lock().unwrap() = Some(port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// A port bound to 127.0.0.1 but not listening: connecting is refused, and no other
/// process can take the port until [`ClosedPort::listen`] turns it into a listener (a
/// collector that starts later at an address the relay already has).
pub struct ClosedPort {
    socket: tokio::net::TcpSocket,
    pub port: u16,
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = socket.local_addr().unwrap().port();
        ClosedPort { socket, port }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts listening on the port.
    pub fn listen(self) -> tokio::net::TcpListener {
        self.socket.listen(1024).unwrap()
    }
}

/// One HTTP/1.1 request on a connection of its own (`head` ends in its headers, without
/// the blank line; `Content-Length` and `Connection: close` are added): the answer's
/// status, or 0 if there was none. For clients that must control every byte.
pub async fn raw_request(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return 0;
    };
    let head = format!(
        "{head}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if stream.write_all(head.as_bytes()).await.is_err() || stream.write_all(body).await.is_err() {
        return 0;
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// `snowplow-relay collector --listen 127.0.0.1:0 ARGS…` as a process, and its address.
pub async fn local_collector_process(args: &[&str]) -> (super::RelayProcess, std::net::SocketAddr) {
    let all = [&["collector", "--listen", "127.0.0.1:0"][..], args].concat();
    let process = super::RelayProcess::start_with(&all, &[]);
    let addr = process.listening_addr("local collector listening").await;
    (process, addr)
}
