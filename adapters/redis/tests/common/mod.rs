//! A `redis-server` of the test's own: started on a free loopback port in a
//! temporary directory with persistence off, killed (and its directory
//! removed) on drop. Nothing depends on a system service; the binary is
//! found on `PATH` (or in `REDIS_SERVER`).

#![allow(dead_code)]

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tenlives_redis::{FleetRateLimiter, FleetStats, KeyedFleetLimiter, KeyedFleetStats};

pub mod proxy;

pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    pub fn start() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tenlives-redis-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the server's directory");
        let mut server = RedisServer {
            port: free_port(),
            dir,
            child: None,
        };
        server.restart();
        server
    }

    /// The loopback port it listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL clients connect to.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("client")
    }

    /// A blocking connection, for direct commands in tests.
    pub fn connection(&self) -> redis::Connection {
        self.client()
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect")
    }

    /// Kills the server (SIGKILL: no goodbye to clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)starts the server on the same port, empty, and waits for PING.
    pub fn restart(&mut self) {
        self.kill();
        let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned());
        let child = Command::new(&bin)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} (install redis-server): {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok()
                && let Ok(mut con) = self
                    .client()
                    .get_connection_with_timeout(Duration::from_millis(200))
                && redis::cmd("PING").query::<String>(&mut con).as_deref() == Ok("PONG")
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING within 10 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `cond` every 5 ms until it holds, for at most `limit`.
pub async fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cond()
}

/// Every token granted to a fleet limiter is held, spent, given back or
/// lost.
pub fn fleet_balanced(s: &FleetStats) -> bool {
    s.lease_tokens + s.spent + s.returned + s.lost == s.granted
}

/// Every token Redis granted to a keyed limiter went to a debt or a lease,
/// and every lease token is held, spent, given back or lost.
pub fn keyed_balanced(s: &KeyedFleetStats) -> bool {
    s.charged + s.lease_tokens + s.spent + s.returned + s.lost == s.granted
}

/// [`fleet_balanced`] must hold again within a second. `stats` reads its
/// counters one at a time, and a give-back under way has taken its tokens
/// out of the lease but not yet counted them returned or lost, so a view
/// may miss them while a call is in flight; a token really lost never lets
/// the identity hold. (`shutdown`'s final view holds exactly.)
pub async fn fleet_accounted(limiter: &FleetRateLimiter) {
    assert!(
        wait_for(Duration::from_secs(1), || fleet_balanced(&limiter.stats())).await,
        "tokens unaccounted for: {:?}",
        limiter.stats()
    );
}

/// [`keyed_balanced`] must hold again within a second (see
/// [`fleet_accounted`]), and no more debt was settled than was made.
pub async fn keyed_accounted<K>(limiter: &KeyedFleetLimiter<K>)
where
    K: std::hash::Hash + Eq + Clone + Send + Sync + std::fmt::Display + 'static,
{
    assert!(
        wait_for(Duration::from_secs(1), || keyed_balanced(&limiter.stats())).await,
        "tokens unaccounted for: {:?}",
        limiter.stats()
    );
    let s = limiter.stats();
    assert!(s.charged + s.uncharged <= s.provisional, "{s:?}");
}
