//! A loopback TCP proxy between a limiter and its `redis-server`, with
//! switches for the chaos tests: add latency, stall (hold every byte until
//! released), drop the open connections, refuse new ones, or answer every
//! read with bytes that are not RESP at all.
//!
//! It runs on a runtime of its own (one thread), so a test's load cannot
//! starve it and it keeps forwarding while the test's runtime is busy.
//! Every switch is an atomic the forwarding loops read per chunk; dropping
//! the connections bumps a generation that the loops watch.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy answers in garbage mode: not a RESP type byte, then
/// bytes that make no sense either.
pub const GARBAGE: &[u8] = b"?garbage\xff\x00\r\n";

#[derive(Default)]
struct Switches {
    delay_ms: AtomicU64,
    stalled: AtomicBool,
    refuse: AtomicBool,
    garbage: AtomicBool,
    accepted: AtomicU64,
}

pub struct Proxy {
    port: u16,
    switches: Arc<Switches>,
    generation: watch::Sender<u64>,
    shutdown: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to
    /// `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> Self {
        let std_listener =
            std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the proxy");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let port = std_listener.local_addr().expect("local address").port();
        let switches = Arc::new(Switches::default());
        let (generation, gen_rx) = watch::channel(0u64);
        let (shutdown, mut shut_rx) = watch::channel(false);
        let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, upstream));
        let sw = Arc::clone(&switches);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("proxy runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("listener");
                loop {
                    tokio::select! {
                        _ = shut_rx.changed() => return,
                        accepted = listener.accept() => {
                            let Ok((client, _)) = accepted else { continue };
                            sw.accepted.fetch_add(1, Ordering::Relaxed);
                            if sw.refuse.load(Ordering::Relaxed) {
                                // Refused: closed at once, before any byte.
                                drop(client);
                                continue;
                            }
                            tokio::spawn(connection(
                                client,
                                upstream,
                                Arc::clone(&sw),
                                gen_rx.clone(),
                                shut_rx.clone(),
                            ));
                        }
                    }
                }
            });
        });
        Proxy {
            port,
            switches,
            generation,
            shutdown,
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("client")
    }

    /// Holds every chunk this long before forwarding it (both directions).
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.switches.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// While stalled, nothing is forwarded: the bytes wait, the connections
    /// stay open.
    pub fn set_stalled(&self, stalled: bool) {
        self.switches.stalled.store(stalled, Ordering::Relaxed);
    }

    /// While refusing, a new connection is closed as soon as it is accepted.
    pub fn set_refuse(&self, refuse: bool) {
        self.switches.refuse.store(refuse, Ordering::Relaxed);
    }

    /// While on, every read from a client is answered with [`GARBAGE`]
    /// instead of being forwarded.
    pub fn set_garbage(&self, garbage: bool) {
        self.switches.garbage.store(garbage, Ordering::Relaxed);
    }

    /// Closes every open connection (both sides).
    pub fn drop_connections(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Connections accepted so far (refused ones included).
    pub fn accepted(&self) -> u64 {
        self.switches.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Waits out the delay and any stall; `false` when the connection is to
/// close meanwhile (dropped, or the proxy shutting down).
async fn hold(
    sw: &Switches,
    generation: &mut watch::Receiver<u64>,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let pause = async {
        let delay = sw.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        while sw.stalled.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    tokio::select! {
        () = pause => true,
        _ = generation.changed() => false,
        _ = shutdown.changed() => false,
    }
}

/// One client connection: forwards both ways under the switches. The delay
/// is added to what the client sends, so a round trip takes that much
/// longer; a stall holds both directions.
async fn connection(
    mut client: TcpStream,
    upstream: SocketAddr,
    sw: Arc<Switches>,
    mut generation: watch::Receiver<u64>,
    mut shutdown: watch::Receiver<bool>,
) {
    generation.mark_unchanged();
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return; // Redis is down: the client sees its connection closed.
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw_half) = server.split();
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            read = cr.read(&mut up) => {
                let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                if !hold(&sw, &mut generation, &mut shutdown).await {
                    return;
                }
                let sent = if sw.garbage.load(Ordering::Relaxed) {
                    // Answered in the server's place, with bytes that are
                    // not RESP.
                    cw.write_all(GARBAGE).await
                } else {
                    sw_half.write_all(&up[..n]).await
                };
                if sent.is_err() {
                    return;
                }
            }
            read = sr.read(&mut down) => {
                let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                while sw.stalled.load(Ordering::Relaxed) {
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(2)) => {}
                        _ = generation.changed() => return,
                        _ = shutdown.changed() => return,
                    }
                }
                if cw.write_all(&down[..n]).await.is_err() {
                    return;
                }
            }
            _ = generation.changed() => return,
            _ = shutdown.changed() => return,
        }
    }
}
